#!/bin/bash
# vela disk serve: NBD against real clients (nbdinfo, qemu-img, qemu-io, nbdcopy).
. "$(dirname "$0")/lib.sh"
command -v nbdinfo >/dev/null || { echo "SKIP: nbdinfo missing (libnbd-bin)"; exit 0; }
d=$VELA_HOME/nbd
mkdir -p "$d" && cd "$d"
port=$((20000 + RANDOM % 20000))
serve() {   # serve PORT ARGS... : start, wait until listening
	local p=$1
	shift
	"$VELA" disk serve --nbd "127.0.0.1:$p" "$@" > "serve-$p.log" 2>&1 &
	for _ in $(seq 50); do grep -q serving "serve-$p.log" 2>/dev/null && return 0; sleep 0.1; done
	return 1
}
stop_servers() { pkill -f "vela disk serve --nbd 127.0.0.1:" 2>/dev/null; sleep 0.3; }
trap 'stop_servers; cleanup' EXIT

qemu-img create -q -f qcow2 img.qcow2 64M
qemu-io -c 'write -P 0x41 0 1M' -c 'write -P 0x42 40M 64k' -c 'write -P 0x43 67108352 512' img.qcow2 >/dev/null
check "serve a qcow2 disk read-only" serve $port --readonly img.qcow2
uri=nbd://127.0.0.1:$port/img.qcow2
check "nbdinfo sees the export with structured replies" sh -c "nbdinfo $uri | grep -q 'using structured packets'"
check "nbdinfo sees base:allocation" sh -c "nbdinfo $uri | grep -q base:allocation"
check "nbdinfo sees a read-only export of the right size" sh -c "nbdinfo --json $uri | grep -q '\"export-size\": 67108864' && nbdinfo $uri | grep -q 'is_read_only: true'"
check "nbdinfo --map shows the holes" sh -c "nbdinfo --map $uri | grep -q '1048576 *40894464 *3 *hole,zero'"
check "qemu-img compare: the export equals the disk" qemu-img compare -q "$uri" img.qcow2
check "qemu-img convert of the export" sh -c "qemu-img convert -O raw $uri out.raw && qemu-img compare -q out.raw img.qcow2"
# two readers at once
qemu-img convert -O raw "$uri" r1.raw & r1=$!
nbdcopy "$uri" r2.raw & r2=$!
wait $r1 $r2   # not a bare wait: the server is a background job too
check "two concurrent readers get the same bytes" sh -c "cmp -s r1.raw r2.raw && qemu-img compare -q r1.raw img.qcow2"
check "writes to a read-only export are refused" sh -c "! qemu-io -f raw -c 'write -P 0x99 0 4k' $uri 2>/dev/null | grep -q '^wrote'"
check "an unknown export name is refused" sh -c "! nbdinfo nbd://127.0.0.1:$port/nope >/dev/null 2>&1"

# read-write, a VMDK this time
"$VELA" disk create -s 32m rw.vmdk >/dev/null
p2=$((port + 1))
check "serve a VMDK read-write" serve $p2 rw.vmdk
uri2=nbd://127.0.0.1:$p2/rw.vmdk
check "qemu-io writes through NBD" sh -c "qemu-io -f raw -c 'write -P 0x55 5M 3M' -c 'write -P 0x56 31M 1M' -c flush $uri2 | grep -c ^wrote | grep -qx 2"
check "qemu-io reads its writes back through NBD" sh -c "qemu-io -f raw -c 'read -P 0x55 5M 3M' -c 'read -P 0x56 31M 1M' $uri2 | grep -c ^read | grep -qx 2"
check "write zeroes through NBD" sh -c "qemu-io -f raw -c 'write -z 5M 1M' -c 'read -P 0 5M 1M' $uri2 | grep -q ^read"
stop_servers
check "after the server stops, the VMDK holds the writes and is clean" \
	sh -c "qemu-img check -q rw.vmdk && qemu-io -c 'read -P 0x55 6M 2M' -c 'read -P 0 5M 1M' -c 'read -P 0x56 31M 1M' rw.vmdk | grep -c ^read | grep -qx 3"
finish
