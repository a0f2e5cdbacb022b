#!/bin/bash
# Suspend and resume of a 512 MiB guest: Vela (vela vm suspend / resume)
# against libvirt's virsh save / restore of the same guest (same kernel,
# initrd, memory, TCG), same run.  The guest fills 200 MiB of its RAM with
# random data first, so there are real pages to save.
# Usage: bench/suspend.sh [ROUNDS]   (default 3; medians are reported)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:-3}
vela=$top/build/bin/vela
guest=$top/build/guest
virsh="virsh -q -c qemu:///system"
work=$(mktemp -d /tmp/vela-bench-suspend.XXXXXX)
export VELA_HOME=$work/home
ms() { date +%s%N; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
cleanup() {
	"$vela" vm stop hard "$vmx" >/dev/null 2>&1 || true
	$virsh destroy vbs >/dev/null 2>&1 || true
	$virsh undefine vbs >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

# libvirt as bench/velad-api.sh sets it up (TCG, /dev/kvm hidden from it).
. "$top/bench/libvirt.sh"
libvirt_up

cmdline="console=ttyS0 quiet panic=-1 vela.fillmem=200"
mkdir -p "$work/vm" "$VELA_HOME"
cp "$guest/vmlinuz" "$guest/initrd.img" "$work/"
chmod 755 "$work"; chmod 644 "$work"/vmlinuz "$work"/initrd.img
vmx=$work/vm/vbs.vmx
cat > "$vmx" <<VMX
config.version = "8"
virtualHW.version = "4"
displayName = "vbs"
memsize = "512"
engine.accel = "tcg"
boot.kernel = "$work/vmlinuz"
boot.initrd = "$work/initrd.img"
boot.cmdline = "$cmdline"
serial0.present = "TRUE"
serial0.fileType = "console"
VMX
cat > "$work/vbs.xml" <<XML
<domain type='qemu'><name>vbs</name><memory unit='MiB'>512</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type><kernel>$work/vmlinuz</kernel><initrd>$work/initrd.img</initrd>
<cmdline>$cmdline</cmdline></os>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>
<serial type='file'><source path='$work/vbs-serial.log'/><target port='0'/></serial></devices></domain>
XML
$virsh define "$work/vbs.xml" >/dev/null

"$vela" vm start "$vmx" >/dev/null
$virsh start vbs >/dev/null
"$vela" vm console --wait "VELA-GUEST-FILLED" --timeout 120 "$vmx" >/dev/null
for ((i = 0; i < 600; i++)); do grep -q VELA-GUEST-FILLED "$work/vbs-serial.log" 2>/dev/null && break; sleep 0.2; done
grep -q VELA-GUEST-FILLED "$work/vbs-serial.log" || { echo "the libvirt guest did not come up" >&2; exit 1; }

vs=() vr=() ls=() lr=()
for ((r = 1; r <= rounds; r++)); do
	t=$(ms); "$vela" vm suspend "$vmx" >/dev/null; vs+=($(( ($(ms) - t) / 1000000 )))
	t=$(ms); "$vela" vm resume "$vmx" >/dev/null; vr+=($(( ($(ms) - t) / 1000000 )))
	t=$(ms); $virsh save vbs "$work/vbs.save" >/dev/null; ls+=($(( ($(ms) - t) / 1000000 )))
	t=$(ms); $virsh restore "$work/vbs.save" >/dev/null; lr+=($(( ($(ms) - t) / 1000000 )))
	rm -f "$work/vbs.save"
done
size=$(cat "$work"/vm/vela*.log | grep -o "suspended to [^ ]* ([0-9]* MiB)" | tail -n1 | grep -o "[0-9]* MiB" || true)
vsm=$(median "${vs[@]}") vrm=$(median "${vr[@]}") lsm=$(median "${ls[@]}") lrm=$(median "${lr[@]}")
echo "512 MiB guest, 200 MiB of it random; Vela's state file: $size"
echo "suspend ms (median of $rounds): vela vm suspend $vsm (${vs[*]}), virsh save $lsm (${ls[*]})"
echo "resume ms (median of $rounds): vela vm resume $vrm (${vr[*]}), virsh restore $lrm (${lr[*]})"
awk -v a="$vsm" -v b="$lsm" 'BEGIN {printf "suspend ratio vela/virsh: %.2fx (lower is better)\n", a / b}'
awk -v a="$vrm" -v b="$lrm" 'BEGIN {printf "resume ratio vela/virsh: %.2fx (lower is better)\n", a / b}'
