#!/bin/bash
# NBD server performance: `qemu-img bench` as the client against
# `vela disk serve --nbd` and against qemu-nbd, on the same image, in the same
# run, over a UNIX socket.  4 KiB at queue depth 32 and 1 MiB sequential,
# reads and writes.  Prints one row per workload with the Vela/peer ratio.
#
#   bench/nbd.sh [FORMAT]        FORMAT: raw (default), vmdk, qcow2
#   SIZE=1G COUNT=100000 ROUNDS=2 bench/nbd.sh vmdk
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
VELA=$TOP/build/bin/vela
FMT=${1:-raw}
SIZE=${SIZE:-1G}
COUNT=${COUNT:-100000}
ROUNDS=${ROUNDS:-2}
work=$(mktemp -d /var/tmp/vela-bench-nbd.XXXXXX)
server=
cleanup() {
	[ -n "$server" ] && kill "$server" 2>/dev/null
	sleep 0.2
	rm -rf "$work"
}
trap cleanup EXIT

img=$work/disk.$FMT
qemu-img create -q -f "$FMT" "$img" "$SIZE"
qemu-io -f "$FMT" -c "write -P 0x33 0 $SIZE" "$img" >/dev/null
sock=$work/nbd.sock
url="nbd+unix:///disk?socket=$sock"

start_vela() { "$VELA" disk serve --nbd "$sock" --name disk "$img" >/dev/null & server=$!; }
start_qemu_nbd() { qemu-nbd -f "$FMT" -k "$sock" -x disk --shared=4 -t "$img" & server=$!; }
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; server=; rm -f "$sock"; }

# run NAME ARGS...: seconds qemu-img bench takes
run() {
	local s e
	s=$(date +%s.%N)
	qemu-img bench -f raw "$@" "$url" >/dev/null
	e=$(date +%s.%N)
	awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }'
}

n1m=$((COUNT / 100))
declare -A best
for round in $(seq "$ROUNDS"); do
	for who in vela qemu-nbd; do
		if [ $who = vela ]; then start_vela; else start_qemu_nbd; fi
		for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
		for w in "4k-read:-c $COUNT -d 32 -s 4k -S 4k" "4k-write:-c $COUNT -d 32 -s 4k -S 4k -w" \
			 "1m-read:-c $n1m -d 8 -s 1M -S 1M" "1m-write:-c $n1m -d 8 -s 1M -S 1M -w"; do
			name=${w%%:*}
			# shellcheck disable=SC2086
			t=$(run ${w#*:})
			k="$who/$name"
			if [ -z "${best[$k]:-}" ] || awk -v a="$t" -v b="${best[$k]}" 'BEGIN { exit !(a < b) }'; then
				best[$k]=$t
			fi
		done
		stop_server
	done
done

echo "NBD over a UNIX socket, $FMT image of $SIZE, client qemu-img bench, best of $ROUNDS rounds"
printf '%-10s %10s %12s %8s\n' workload "vela s" "qemu-nbd s" "ratio"
for name in 4k-read 4k-write 1m-read 1m-write; do
	v=${best[vela/$name]} q=${best[qemu-nbd/$name]}
	printf '%-10s %10s %12s %8s\n' "$name" "$v" "$q" "$(awk -v a="$v" -v b="$q" 'BEGIN { printf "%.2fx", b / a }')"
done
