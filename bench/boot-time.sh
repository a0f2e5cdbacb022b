#!/bin/bash
# Boot time of the test guest: power-on request to "VELA-GUEST-READY" on the
# serial console (userspace up, disks listed).  Vela (vela vm start + console)
# against the peer: the same guest run by a bare qemu-system-x86_64 with the
# same machine, disk and kernel, its serial console on a pipe.
# Usage: bench/boot-time.sh [RUNS]   (default 5; prints medians and the ratio)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-5}
vela=$top/build/bin/vela
guest=$top/build/guest
export VELA_HOME=$(mktemp -d /tmp/vela-bench.XXXXXX)
trap 'rm -rf "$VELA_HOME"' EXIT
dir=$VELA_HOME/vm
mkdir -p "$dir"
truncate -s 64M "$dir/disk.img"
cat > "$dir/bench.vmx" <<VMX
memsize = "256"
scsi0.present = "TRUE"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "disk.img"
serial0.present = "TRUE"
serial0.fileType = "console"
boot.kernel = "$guest/vmlinuz"
boot.initrd = "$guest/initrd.img"
boot.cmdline = "console=ttyS0 quiet panic=-1"
VMX
ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

vela_times=() qemu_times=()
for ((i = 1; i <= runs; i++)); do
	t0=$(ms)
	"$vela" vm start "$dir/bench.vmx" >/dev/null
	"$vela" vm console --wait VELA-GUEST-READY --timeout 120 "$dir/bench.vmx"
	vela_times+=($(( $(ms) - t0 )))
	"$vela" vm stop hard "$dir/bench.vmx" >/dev/null

	t0=$(ms)
	qemu-system-x86_64 -nodefaults -no-user-config -machine q35 -accel tcg -m 256 -display none \
		-device virtio-scsi-pci,id=scsi0 -drive if=none,id=d0,format=raw,file="$dir/disk.img",cache=writeback \
		-device scsi-hd,bus=scsi0.0,drive=d0 -kernel "$guest/vmlinuz" -initrd "$guest/initrd.img" \
		-append "console=ttyS0 quiet panic=-1" -serial stdio < /dev/null 2>/dev/null |
		{ grep -a -m1 -q VELA-GUEST-READY; pkill -f "file=$dir/disk.img" || true; }
	qemu_times+=($(( $(ms) - t0 )))
	sleep 0.3
done
v=$(printf '%s\n' "${vela_times[@]}" | median)
q=$(printf '%s\n' "${qemu_times[@]}" | median)
echo "runs: $runs"
echo "vela (vela vm start -> marker):       ${vela_times[*]} ms, median $v ms"
echo "peer (bare qemu-system-x86_64 -> marker): ${qemu_times[*]} ms, median $q ms"
awk -v v="$v" -v q="$q" 'BEGIN {printf "ratio vela/peer: %.2f (<= 1.00 means Vela adds no time)\n", v / q}'
