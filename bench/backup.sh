#!/bin/bash
# Hot backup throughput: `vela backup` of a RUNNING VM whose 4 GiB disk is
# 50 % allocated (2 GiB of random data in 64 MiB runs, every other one)
# against `qemu-img convert` of the same image, static, to the same
# format, same run.  Plain (monolithicSparse) and compressed
# (streamOptimized).  The guest is idle; the backup includes the live redo
# log and its merge.
# Usage: bench/backup.sh
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
vela=$top/build/bin/vela
guest=$top/build/guest
work=$(mktemp -d /var/tmp/vela-bench-backup.XXXXXX)
export VELA_HOME=$work/home
ms() { date +%s%N; }
cleanup() { "$vela" vm stop hard "$vmx" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/vm" "$VELA_HOME"
img=$work/vm/disk.vmdk
"$vela" disk create -s 4g "$img" >/dev/null
# 32 runs of 64 MiB of random data, every other 64 MiB: 2 GiB allocated.
head -c $((64 << 20)) /dev/urandom > "$work/run.bin"
for ((i = 0; i < 32; i++)); do
	qemu-io -f vmdk -c "write -s $work/run.bin $((i * 128))M 64M" "$img" >/dev/null
done
rm -f "$work/run.bin"
vmx=$work/vm/vbk.vmx
cat > "$vmx" <<VMX
config.version = "8"
virtualHW.version = "4"
displayName = "vbk"
memsize = "256"
boot.kernel = "$guest/vmlinuz"
boot.initrd = "$guest/initrd.img"
boot.cmdline = "console=ttyS0 quiet panic=-1"
serial0.present = "TRUE"
serial0.fileType = "console"
virtio0:0.present = "TRUE"
virtio0:0.fileName = "disk.vmdk"
VMX
"$vela" vm start "$vmx" >/dev/null
"$vela" vm console --wait VELA-GUEST-READY --timeout 60 "$vmx" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches

t=$(ms); "$vela" backup "$vmx" --to "$work/b1" >/dev/null; vb=$(( ($(ms) - t) / 1000000 ))
"$vela" vm stop hard "$vmx" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(ms); qemu-img convert -O vmdk "$img" "$work/q1.vmdk"; qb=$(( ($(ms) - t) / 1000000 ))
"$vela" vm start "$vmx" >/dev/null
"$vela" vm console --wait VELA-GUEST-READY --timeout 60 "$vmx" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(ms); "$vela" backup "$vmx" --to "$work/b2" --compress >/dev/null; vc=$(( ($(ms) - t) / 1000000 ))
"$vela" vm stop hard "$vmx" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(ms); qemu-img convert -O vmdk -o subformat=streamOptimized "$img" "$work/q2.vmdk"; qc=$(( ($(ms) - t) / 1000000 ))
qemu-img compare "$work"/b1/*/virtio0-0.vmdk "$img" >/dev/null && echo "the plain backup equals the disk (qemu-img compare)"
qemu-img compare "$work"/b2/*/virtio0-0.vmdk "$img" >/dev/null && echo "the compressed backup equals the disk (qemu-img compare)"
# Incremental: the same VM with changed-block tracking; a first backup
# (full), the guest rewrites 1 % of the disk (41 MiB, random), then an
# incremental backup.
sed -i 's/^boot.cmdline = .*/boot.cmdline = "console=ttyS0 quiet panic=-1 vela.cmdloop=1"/' "$vmx"
echo 'ctkEnabled = "TRUE"' >> "$vmx"
"$vela" vm start "$vmx" >/dev/null
"$vela" vm console --wait "vela-guest# " --timeout 60 "$vmx" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(ms); "$vela" backup "$vmx" --to "$work/b3" --incremental >/dev/null; vf=$(( ($(ms) - t) / 1000000 ))
"$vela" vm console --send 'dd if=/dev/urandom of=/dev/vda bs=1M count=41 seek=1000 conv=fsync 2>/dev/null; echo RW-DONE-$((6*7))\n' "$vmx" >/dev/null
"$vela" vm console --wait "RW-DONE-42" --timeout 300 "$vmx" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(ms); inc=$("$vela" --json backup "$vmx" --to "$work/b3" --incremental); vi=$(( ($(ms) - t) / 1000000 ))
"$vela" vm stop hard "$vmx" >/dev/null
changed=$(echo "$inc" | sed -n 's/.*"changed_blocks": *\([0-9]*\).*/\1/p')
mib=2048
echo "4 GiB disk, 2 GiB allocated; vela backup of the running VM vs qemu-img convert of the static image"
echo "plain:      vela backup $vb ms ($(( mib * 1000 / vb )) MiB/s), qemu-img convert $qb ms ($(( mib * 1000 / qb )) MiB/s)"
echo "compressed: vela backup --compress $vc ms, qemu-img convert -o subformat=streamOptimized $qc ms"
awk -v a="$vb" -v b="$qb" 'BEGIN {printf "plain throughput ratio vela/qemu-img: %.2fx (higher is better)\n", b / a}'
awk -v a="$vc" -v b="$qc" 'BEGIN {printf "compressed throughput ratio vela/qemu-img: %.2fx (higher is better)\n", b / a}'
echo "incremental (ctkEnabled, after the guest rewrote 41 MiB = 1 % of the disk): full $vf ms, incremental $vi ms ($changed blocks of 64 KiB)"
awk -v a="$vi" -v b="$vf" 'BEGIN {printf "incremental / full time: %.1f %% (target < 5 %%)\n", 100 * a / b}'
