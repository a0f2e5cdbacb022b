#!/bin/bash
# Offline disk operations, Vela vs qemu-img in the same run:
#   addredo of a 1 TiB sparse VMDK     vs  qemu-img create -f vmdk -b
#   convert of an 8 GiB sparse VMDK (30 % allocated) to monolithicSparse
#                                      vs  qemu-img convert -O vmdk
#   commit of a redo log holding 1 GiB vs  qemu-img commit
# Usage: bench/disk-ops.sh [RUNS]  (default 3; medians; DIR=... for the scratch folder)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
vela=$top/build/bin/vela
runs=${1:-3}
dir=${DIR:-$(mktemp -d /var/tmp/vela-bench-disk.XXXXXX)}
trap 'rm -rf "$dir"' EXIT
cd "$dir"
ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }
ratio() { awk -v p="$1" -v v="$2" 'BEGIN {printf "%.2f", p / v}'; }

# ---- addredo on 1 TiB
"$vela" disk create -s 1t big.vmdk >/dev/null
va=() qa=()
# Timed with bash's own clock, no process around the command but itself
# (a $(date) costs more than the command here); 10 times the runs.
for ((i = 0; i < runs * 10; i++)); do
	t=${EPOCHREALTIME/./}; "$vela" disk addredo big.vmdk > child.txt; va+=($(( ${EPOCHREALTIME/./} - t )))
	rm -f "$(cat child.txt)"
	t=${EPOCHREALTIME/./}; qemu-img create -q -f vmdk -b big.vmdk -F vmdk q.vmdk; qa+=($(( ${EPOCHREALTIME/./} - t )))
	rm -f q.vmdk
done
# What starting any program costs here, measured the same way.
fa=()
for ((i = 0; i < runs * 10; i++)); do
	t=${EPOCHREALTIME/./}; /bin/true; fa+=($(( ${EPOCHREALTIME/./} - t )))
done
v=$(printf '%s\n' "${va[@]}" | median); q=$(printf '%s\n' "${qa[@]}" | median); f=$(printf '%s\n' "${fa[@]}" | median)
echo "addredo 1 TiB (whole command): vela ${v} us, qemu-img ${q} us, speed-up vela/qemu $(ratio "$q" "$v")x (/bin/true: ${f} us)"

# ---- convert 8 GiB, 30 % allocated
qemu-img create -q -f vmdk src.vmdk 8G
cmds=()
for ((mb = 0; mb + 3 <= 8192; mb += 10)); do cmds+=(-c "write -P $((mb % 250 + 1)) ${mb}M 3M"); done
qemu-io -f vmdk "${cmds[@]}" src.vmdk >/dev/null
sync
vc=() qc=()
for ((i = 0; i < runs; i++)); do
	t=$(ns); "$vela" disk convert -t monolithicSparse src.vmdk v.vmdk >/dev/null; vc+=($(( ($(ns) - t) / 1000000 )))
	t=$(ns); qemu-img convert -O vmdk src.vmdk q.vmdk; qc+=($(( ($(ns) - t) / 1000000 )))
	[ "$i" = 0 ] && qemu-img compare -q v.vmdk q.vmdk
	rm -f v.vmdk q.vmdk
done
v=$(printf '%s\n' "${vc[@]}" | median); q=$(printf '%s\n' "${qc[@]}" | median)
echo "convert 8 GiB (2.4 GiB data) vmdk->vmdk: vela ${v} ms, qemu-img ${q} ms, speed-up vela/qemu $(ratio "$q" "$v")x"

# ---- commit a redo log holding 1 GiB into a 4 GiB base
vm=() qm=()
for ((i = 0; i < runs; i++)); do
	for who in vela qemu; do
		rm -f base.vmdk base-*.vmdk child.vmdk
		qemu-img create -q -f vmdk base.vmdk 4G
		qemu-io -c 'write -P 1 0 512M' base.vmdk >/dev/null
		if [ $who = vela ]; then child=$("$vela" disk addredo base.vmdk); else
			qemu-img create -q -f vmdk -b base.vmdk -F vmdk child.vmdk; child=child.vmdk; fi
		qemu-io -c 'write -P 2 256M 1G' "$child" >/dev/null
		sync
		t=$(ns)
		if [ $who = vela ]; then "$vela" disk commit --keep "$child" >/dev/null; else qemu-img commit -q "$child"; fi
		el=$(( ($(ns) - t) / 1000000 ))
		if [ $who = vela ]; then vm+=($el); else qm+=($el); fi
	done
done
v=$(printf '%s\n' "${vm[@]}" | median); q=$(printf '%s\n' "${qm[@]}" | median)
echo "commit 1 GiB redo log: vela ${v} ms, qemu-img ${q} ms, speed-up vela/qemu $(ratio "$q" "$v")x"
