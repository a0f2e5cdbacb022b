#!/bin/bash
# Create (once) and boot the demo VM in the local datastore, then attach to
# its serial console.  VELA_HOME defaults to /var/lib/vela.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
vela=$top/build/bin/vela
velad=$top/build/bin/velad
home=${VELA_HOME:-/var/lib/vela}
export VELA_HOME=$home
vmdir=$home/datastores/local/demo
vmx=$vmdir/demo.vmx
# The host daemon first: it owns the inventory (and makes the local
# datastore on its first start).  Ports: velad.conf or 8333/8222.
if ! "$vela" host info >/dev/null 2>&1; then
	"$velad" --web-root "$top/build/web"
	for ((i = 0; i < 50; i++)); do "$vela" host info >/dev/null 2>&1 && break; sleep 0.1; done
	"$vela" host info >/dev/null || { echo "run-demo: velad did not start (see $home/velad.log)" >&2; exit 1; }
	echo "run-demo: started velad (log: $home/velad.log)"
fi

mkdir -p "$vmdir"
if [ ! -f "$vmx" ]; then
	cp "$top/build/guest/vmlinuz" "$top/build/guest/initrd.img" "$vmdir/"
	# A sparse 1 GiB disk with a recognisable first sector.
	truncate -s 1G "$vmdir/demo-disk.img"
	printf 'VELA-DEMO-DISK' | dd of="$vmdir/demo-disk.img" conv=notrunc status=none
	cat > "$vmx" <<'VMX'
#!/usr/bin/vela-vmx
config.version = "8"
virtualHW.version = "4"
displayName = "Demo VM"
guestOS = "other-linux-64"
annotation = "Vela demo: Debian cloud kernel with a busybox userland"
memsize = "256"
numvcpus = "1"
virtio0:0.present = "TRUE"
virtio0:0.fileName = "demo-disk.img"
virtio0:0.mode = "persistent"
ethernet0.present = "TRUE"
ethernet0.connectionType = "nat"
serial0.present = "TRUE"
serial0.fileType = "console"
boot.kernel = "vmlinuz"
boot.initrd = "initrd.img"
boot.cmdline = "console=ttyS0 quiet panic=-1"
VMX
	echo "run-demo: created the demo VM at $vmx"
fi

"$vela" vmx check "$vmx"
if ! "$vela" --json vm list | grep -q "\"$vmx\""; then
	"$vela" vm register --folder /demo "$vmx" >/dev/null
	echo "run-demo: registered the demo VM in velad's inventory"
fi
state=$("$vela" vm getstate "Demo VM")
if [ "$state" = off ]; then
	"$vela" vm start "Demo VM" >/dev/null
	echo "run-demo: powered on \"Demo VM\" through velad"
else
	echo "run-demo: the demo VM is already $state"
fi
"$vela" vm list
"$vela" vm status "$vmx"
echo "run-demo: web UI: https://$(hostname):8333/ (self-signed certificate; log in as a host user with a"
echo "run-demo:   password and a grant, e.g. as root: vela perm grant user:NAME host admin)"
echo "run-demo: API: https://$(hostname):8333/api/v1/ (vela --host $(hostname) --user NAME vm list)"

if [ -t 0 ] && [ -t 1 ]; then
	echo "run-demo: attaching to the serial console (Ctrl-] detaches; the VM keeps running)"
	exec "$vela" vm console "$vmx"
fi
# No terminal: show the boot on the console, leave the VM running.
"$vela" vm console --wait VELA-GUEST-READY --timeout 120 "$vmx"
"$vela" vm console --dump "$vmx"
echo
echo "run-demo: the demo VM is on.  Attach: VELA_HOME=$home $vela vm console $vmx"
echo "run-demo: power it off:        VELA_HOME=$home $vela vm stop soft $vmx"
