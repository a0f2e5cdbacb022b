#!/bin/bash
# Live redo log latency while the guest writes: a VM with one small (64 MiB)
# and one huge (1 TiB, sparse) virtio disk runs vela-io randwrite on both;
# `vela vm addredo` is timed on each (the supervisor's own measure of the
# switch, and the command's wall clock), then folded back with
# `vela vm commit`.  The target: <= 10 ms, the same for both sizes.
# Then a snapshot of both disks (wall clock of `vela vm snapshot create`).
#
#   bench/live-addredo.sh            (REPEAT=5)
set -euo pipefail
TOP=$(cd "$(dirname "$0")/.." && pwd)
VELA=$TOP/build/bin/vela
GUEST=$TOP/build/guest
REPEAT=${REPEAT:-5}
export VELA_HOME=$(mktemp -d /var/tmp/vela-bench-redo.XXXXXX)
dir=$VELA_HOME/vm
mkdir -p "$dir"
vmx=$dir/bench.vmx
cleanup() {
	"$VELA" vm stop hard "$vmx" >/dev/null 2>&1 || true
	rm -rf "$VELA_HOME"
}
trap cleanup EXIT
"$VELA" disk create -s 64m "$dir/small.vmdk" >/dev/null
"$VELA" disk create -s 1t "$dir/huge.vmdk" >/dev/null
cat > "$vmx" <<EOF
config.version = "8"
virtualHW.version = "4"
displayName = "bench"
memsize = "256"
boot.kernel = "$GUEST/vmlinuz"
boot.initrd = "$GUEST/initrd.img"
boot.cmdline = "console=ttyS0 quiet panic=-1 vela.cmdloop=1"
serial0.present = "TRUE"
serial0.fileType = "console"
virtio0:0.present = "TRUE"
virtio0:0.fileName = "small.vmdk"
virtio0:1.present = "TRUE"
virtio0:1.fileName = "huge.vmdk"
EOF
"$VELA" vm start "$vmx" >/dev/null
"$VELA" vm console --wait "vela-guest# " --timeout 60 "$vmx" >/dev/null
# Both disks busy with 4k random writes for the whole run.
"$VELA" vm console --send "for d in /dev/vda /dev/vdb; do vela-io \$d randwrite 4096 600 2 67108864 >/dev/null & done\n" "$vmx"
sleep 2

printf '%-6s %-10s %14s %14s %14s\n' disk size "addredo ms" "(wall ms)" "commit ms"
for d in 0 1; do
	[ $d = 0 ] && name=small size=64MiB || { name=huge; size=1TiB; }
	for i in $(seq "$REPEAT"); do
		s=$(date +%s%N)
		out=$("$VELA" vm addredo --json "$vmx" virtio0:$d)
		e=$(date +%s%N)
		ms=$(echo "$out" | tr -d ' \n' | grep -o '"ms":[0-9]*' | cut -d: -f2)
		c=$("$VELA" vm commit --json "$vmx" virtio0:$d | tr -d ' \n' | grep -o '"ms":[0-9]*' | cut -d: -f2)
		printf '%-6s %-10s %14s %14s %14s\n' "$name" "$size" "$ms" "$(((e - s) / 1000000))" "$c"
	done
done

# A snapshot of both disks at once (the .vmsd written too), then its delete
# (both redo logs merged back live).
printf '\n%-10s %14s %14s\n' "" "snapshot ms" "delete ms"
for i in $(seq "$REPEAT"); do
	s=$(date +%s%N)
	"$VELA" vm snapshot create "$vmx" "bench$i" >/dev/null
	m=$(date +%s%N)
	"$VELA" vm snapshot delete "$vmx" "bench$i" >/dev/null
	e=$(date +%s%N)
	printf '%-10s %14s %14s\n' "2 disks" "$(((m - s) / 1000000))" "$(((e - m) / 1000000))"
done
