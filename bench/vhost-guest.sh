#!/bin/bash
# Guest-visible disk performance: the test guest runs vela-io (O_DIRECT,
# THREADS requests in flight) against a virtio-blk disk served over
# vhost-user-blk by Vela (`vela disk serve --vhost-user`) and by
# qemu-storage-daemon, on the same image, in the same run, with the same QEMU
# command line.  Prints one row per workload with the Vela/peer ratio.
#
#   bench/vhost-guest.sh [FORMAT]      FORMAT: raw (default), vmdk, qcow2
#   SECS=5 SIZE=512M ROUNDS=2 bench/vhost-guest.sh
#   VELA=/other/build/vela WORKLOADS="write 1048576 2" bench/vhost-guest.sh
#
# Guests run under TCG here, so the guest's own CPU bounds what it can ask
# for; the ratio is what counts.
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
VELA=${VELA:-$TOP/build/bin/vela}   # VELA=another build compares two versions
GUEST=$TOP/build/guest
FMT=${1:-raw}
SECS=${SECS:-5}
SIZE=${SIZE:-512M}
ROUNDS=${ROUNDS:-2}
work=$(mktemp -d /var/tmp/vela-bench-vhost.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.3
	[ -n "${KEEP:-}" ] && cp "$work/console.log" /tmp/bench-console.log 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT

img=$work/disk.$FMT
case $FMT in
raw) qfmt=raw ;;
vmdk) qfmt=vmdk ;;
qcow2) qfmt=qcow2 ;;
*) echo "format: raw, vmdk or qcow2" >&2; exit 2 ;;
esac
qemu-img create -q -f "$qfmt" "$img" "$SIZE"
# Fully written: reads must hit data, not holes.
qemu-io -f "$qfmt" -c "write -P 0x33 0 $SIZE" "$img" >/dev/null

workloads=("randread 4096 8" "randwrite 4096 8" "read 1048576 2" "write 1048576 2")
# WORKLOADS="write 1048576 2;read 1048576 2" runs only those.
[ -n "${WORKLOADS:-}" ] && IFS=';' read -r -a workloads <<< "$WORKLOADS"

# guest_run SOCKET LABEL: boot the guest on the served disk, run every workload.
guest_run() {
	local sock=$1 label=$2 con=$work/con-$2
	rm -f "$con.in" "$con.out"
	mkfifo "$con.in" "$con.out"
	qemu-system-x86_64 -accel tcg -m 512 -smp 2 -nodefaults -no-user-config -display none \
		-object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
		-kernel "$GUEST/vmlinuz" -initrd "$GUEST/initrd.img" \
		-append "console=ttyS0 quiet panic=-1 vela.cmdloop=1" -serial "pipe:$con" \
		-chardev "socket,id=vb,path=$sock" -device vhost-user-blk-pci,chardev=vb,num-queues=2 &
	local qpid=$!
	# Read-write opens of the FIFOs do not block, so a QEMU that dies before
	# opening its serial pipe makes the reads below time out, not hang.
	exec 3<>"$con.out" 4<>"$con.in"
	local line
	while IFS= read -r -t 120 -u 3 line; do
		[[ $line == *VELA-GUEST-READY* ]] && break
	done
	sleep 1
	for w in "${workloads[@]}"; do
		set -- $w
		printf 'vela-io /dev/vda %s %s %s %s; echo BENCH-%s\n' "$1" "$2" "$SECS" "$3" "DONE" >&4
		while IFS= read -r -t $((SECS * 4 + 60)) -u 3 line; do
			line=${line//$'\r'/}
			echo "$label: $line" >> "$work/console.log"
			[[ $line == *VELA-IO* ]] && echo "$label VELA-IO${line#*VELA-IO}" >> "$work/results"
			[[ $line == BENCH-DONE* ]] && break
		done
	done
	kill "$qpid" 2>/dev/null || true
	wait "$qpid" 2>/dev/null || true
	exec 3<&- 4>&-
}

for round in $(seq "$ROUNDS"); do
	sock=$work/vela.sock
	"$VELA" disk serve --vhost-user "$sock" --queues 2 "$img" >/dev/null &
	vpid=$!
	pids+=("$vpid")
	for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
	guest_run "$sock" vela
	kill "$vpid"; wait "$vpid" 2>/dev/null || true

	sock=$work/qsd.sock
	qemu-storage-daemon --blockdev "driver=file,node-name=f0,filename=$img,aio=threads" \
		--blockdev "driver=$qfmt,node-name=d0,file=f0" \
		--export "type=vhost-user-blk,id=e0,node-name=d0,addr.type=unix,addr.path=$sock,writable=on,num-queues=2" &
	qpid=$!
	pids+=("$qpid")
	for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
	guest_run "$sock" qsd
	kill "$qpid"; wait "$qpid" 2>/dev/null || true
done

echo "guest-visible vhost-user-blk, $FMT image of $SIZE, ${SECS}s per workload, best of $ROUNDS rounds"
printf '%-22s %12s %12s %8s\n' workload "vela IOPS" "qsd IOPS" ratio
for w in "${workloads[@]}"; do
	set -- $w
	key="VELA-IO $1 bs=$2 qd=$3 "
	best() { grep "^$1 $key" "$work/results" | sed 's/.* iops=\([0-9]*\).*/\1/' | sort -n | tail -n1; }
	v=$(best vela); q=$(best qsd)
	printf '%-22s %12s %12s %8s\n' "$1 bs=$2 qd=$3" "${v:-?}" "${q:-?}" \
		"$(awk -v a="${v:-0}" -v b="${q:-0}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "?" }')"
done
