#!/bin/bash
# Disk I/O: `vela disk bench` (libvdisk, threads) vs `qemu-img bench` (QEMU's
# block layer, io_uring), same image, same run, same request sequence:
#   4 KiB requests at queue depth 32 with a prime stride (7919 x 4 KiB, so
#   consecutive requests land far apart: random-like, but identical in both),
#   1 MiB sequential requests at depth 8; read and write; raw, qcow2, VMDK.
# Images are 1 GiB and fully written first.  CACHE=writeback (default): both
# through the host page cache (qemu-img -t writeback); CACHE=none: both
# bypass it (qemu-img -t none, Vela --cache none = O_DIRECT data I/O).
# Writes end with a flush in both.  Vela's request buffers may sit on huge
# pages as guest RAM does; SMALL_PAGES=1 puts them on 4 KiB pages instead.
# Through the cache Vela pushes sequential write streams to the device while
# they are written (write-behind); NO_WRITE_BEHIND=1 measures without it.
# Usage: [CACHE=none] [SMALL_PAGES=1] [NO_WRITE_BEHIND=1] bench/disk-io.sh [RUNS]   (default 3; medians; speed-ups)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
vela=$top/build/bin/vela
runs=${1:-3}
cache=${CACHE:-writeback}
pages=; [ "${SMALL_PAGES:-0}" = 1 ] && pages=--small-pages
[ "${NO_WRITE_BEHIND:-0}" = 1 ] && pages="$pages --no-write-behind"
dir=${DIR:-$(mktemp -d /var/tmp/vela-bench-io.XXXXXX)}
trap 'rm -rf "$dir"' EXIT
cd "$dir"
ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

for fmt in raw qcow2 vmdk; do
	qemu-img create -q -f $fmt img.$fmt 1G
	qemu-io -f $fmt -c 'write -P 0x5a 0 1G' img.$fmt >/dev/null
done
sync
echo "cache=$cache${pages:+ (Vela:$pages)}"
printf '%-6s %-22s %10s %10s %8s\n' format workload vela_ms qemu_ms speedup
for fmt in raw qcow2 vmdk; do
	for w in "4k-stride-read:4k:$((4096 * 7919)):100000:32:" "4k-stride-write:4k:$((4096 * 7919)):100000:32:-w" \
		 "1M-seq-read:1M:1M:1000:8:" "1M-seq-write:1M:1M:1000:8:-w"; do
		IFS=: read -r name bs step count depth wflag <<< "$w"
		vt=() qt=()
		for ((i = 0; i < runs; i++)); do
			t=$(ns); "$vela" disk bench --cache $cache $pages $wflag --bs $bs --step $step --count $count --depth $depth img.$fmt >/dev/null
			vt+=($(( ($(ns) - t) / 1000000 )))
			t=$(ns); qemu-img bench -f $fmt -t $cache -i io_uring $wflag -s $bs -S $step -c $count -d $depth img.$fmt >/dev/null
			qt+=($(( ($(ns) - t) / 1000000 )))
		done
		v=$(printf '%s\n' "${vt[@]}" | median); q=$(printf '%s\n' "${qt[@]}" | median)
		printf '%-6s %-22s %10s %10s %7.2fx\n' $fmt $name $v $q "$(awk -v a=$q -v b=$v 'BEGIN {print a / b}')"
	done
done
