#!/bin/bash
# Live disk operations on a running VM whose disk Vela serves over
# vhost-user-blk: redo logs added and committed (every level, frozen and
# not) while the guest writes and verifies, statistics that match what the
# guest did, and an IOPS limit the guest cannot exceed.  Checked from inside
# the guest and with qemu-img on the host.
. "$(dirname "$0")/lib.sh"

vmx=$(make_vm live "$CMDLINE" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "live.vmdk"')
dir=$(dirname "$vmx")
"$VELA" disk create -s 64m "$dir/live.vmdk" >/dev/null
check "start" "$VELA" vm start "$vmx"
check "guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60

N=1500
# The guest writes block i = "BLK<i>" with an fsync each, in the background.
check "the guest starts a write loop" guest_writer_start "$vmx" $N 1
sleep 2
vmx_file() { sed -n 's/^virtio0:0.fileName = "\(.*\)"$/\1/p' "$vmx"; }

out=$("$VELA" vm addredo "$vmx" virtio0:0)
check "live addredo while the guest writes" test $? -eq 0
check "addredo reports its time" sh -c "echo '$out' | grep -q 'addredo done in [0-9]* ms'"
echo "addredo: $out"
check "the .vmx names the new top" test "$(vmx_file)" = live-000001.vmdk
base_sum=$(md5sum < "$dir/live.vmdk")
sleep 1
check "the base does not change under the redo log" test "$(md5sum < "$dir/live.vmdk")" = "$base_sum"
check "the base copies to a consistent image (qemu-img check)" sh -c "cp '$dir/live.vmdk' '$dir/copy.vmdk' && qemu-img check -q '$dir/copy.vmdk'"
check "a second live addredo" "$VELA" vm addredo "$vmx" virtio0:0
check "the .vmx names the second redo log" test "$(vmx_file)" = live-000002.vmdk
check "disk-stats shows a chain of 3" sh -c "'$VELA' vm disk-stats --json '$vmx' | tr -d ' \n' | grep -q '\"depth\":3'"
check "live commit --level 1 (the middle log into the base)" "$VELA" vm commit --level 1 "$vmx" virtio0:0
check "the middle log is gone" test ! -e "$dir/live-000001.vmdk"
check "disk-stats shows a chain of 2" sh -c "'$VELA' vm disk-stats --json '$vmx' | tr -d ' \n' | grep -q '\"depth\":2'"
out=$("$VELA" vm commit "$vmx" virtio0:0)
check "live commit of the top into the base" test $? -eq 0
echo "commit: $out"
check "the .vmx names the base again" test "$(vmx_file)" = live.vmdk
check "the redo logs are gone" sh -c "! ls '$dir'/live-0*.vmdk 2>/dev/null | grep -q ."
check "addredo again" "$VELA" vm addredo "$vmx" virtio0:0
check "frozen commit" "$VELA" vm commit --freeze "$vmx" virtio0:0
check "the .vmx names the base after the frozen commit" test "$(vmx_file)" = live.vmdk
check "addredo for a background commit" "$VELA" vm addredo "$vmx" virtio0:0
check "commit --no-wait returns once started" sh -c "'$VELA' vm commit --no-wait '$vmx' virtio0:0 | grep -q started"
depth_is() { "$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -q "\"depth\":$1"; }
for _ in $(seq 100); do depth_is 1 && break; sleep 0.1; done
check "the background commit ends with the disk on its base" depth_is 1
check "the VM log records the background commit's end" sh -c "grep -q 'event: commit virtio0:0 done' '$dir/vela.log'"
check "the .vmx names the base after the background commit" test "$(vmx_file)" = live.vmdk
if console_has "$vmx" "WRITER-42-DONE"; then
	fail "the operations ran while the guest was writing (the writer finished first)"
else
	pass "the operations ran while the guest was writing"
fi
check "the guest's writer finishes" wait_console "$vmx" "WRITER-42-DONE" 1 300
guest_verify "$vmx" $N 1
bad=$verify_result
check "the guest verifies every block after dropping its caches" test -n "$bad"
check "the verification finishes" test -n "$bad"
check "no block lost or mixed up across the live operations ($bad)" test "$bad" = VERIFY-42-BAD=0

# ---- point-in-time export over NBD while the guest writes on
sock=$VELA_HOME/export.sock
url="nbd+unix:///virtio0-0?socket=$sock"
check "the guest writes BEFORE at block 3000" run_in_guest "$vmx" "printf EXPORT-BEFORE | dd of=/dev/vda bs=512 seek=3000 conv=notrunc oflag=direct 2>/dev/null"
check "export-disk starts" "$VELA" vm export-disk --nbd "$sock" "$vmx" virtio0:0
check "the guest writes AFTER at block 3000" run_in_guest "$vmx" "printf EXPORT-AFTER. | dd of=/dev/vda bs=512 seek=3000 conv=notrunc oflag=direct 2>/dev/null"
check "nbdinfo sees the export" sh -c "nbdinfo '$url' | grep -q 'export-size: 67108864'"
check "nbdinfo --map shows holes" sh -c "nbdinfo --map '$url' | grep -q hole"
check "two concurrent qemu-img readers copy the export" sh -c \
	"qemu-img convert -O raw '$url' '$dir/exp1.raw' & qemu-img convert -O raw '$url' '$dir/exp2.raw'; wait \$!; wait"
check "the copy holds the point in time (BEFORE, not AFTER)" sh -c "dd if='$dir/exp1.raw' bs=512 skip=3000 count=1 2>/dev/null | head -c 13 | grep -q EXPORT-BEFORE"
check "qemu-img compare: the export equals the frozen image" qemu-img compare -q "$url" "$dir/live.vmdk"
check "qemu-img compare: both readers got the same bytes" cmp -s "$dir/exp1.raw" "$dir/exp2.raw"
check "the export refuses writes" sh -c "! qemu-io -f raw -c 'write 0 512' '$url' 2>/dev/null | grep -q 'wrote 512'"
expect_error VELA_E_BUSY "a second export of the same disk is refused" "$VELA" vm export-disk --nbd "$VELA_HOME/x.sock" "$vmx" virtio0:0
check "export-disk --end folds the redo log back" "$VELA" vm export-disk --end "$vmx" virtio0:0
check "after the export the .vmx names the base" test "$(vmx_file)" = live.vmdk
check "the export socket is gone" test ! -e "$sock"
check "the guest reads its latest write" run_in_guest "$vmx" "echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda bs=512 skip=3000 count=1 2>/dev/null | head -c 13 | grep -q EXPORT-AFTER && echo EXPORT-\$((40+2))-GUEST-OK"
check "... and it is AFTER" console_has "$vmx" "EXPORT-42-GUEST-OK"

# ---- statistics match what the guest does (direct I/O: no cache in between)
before=$("$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -o '"wr_ops":[0-9]*' | cut -d: -f2)
check "the guest writes 100 direct 4k blocks" run_in_guest "$vmx" "dd if=/dev/zero of=/dev/vda bs=4096 seek=2000 count=100 oflag=direct 2>/dev/null"
after=$("$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -o '"wr_ops":[0-9]*' | cut -d: -f2)
check "disk-stats counts exactly the guest's 100 writes ($before -> $after)" test $((after - before)) -eq 100
# ---- a discard reaches the engine: the range reads zeros
check "the guest writes 1 MiB at 40 MiB" run_in_guest "$vmx" "dd if=/dev/urandom of=/dev/vda bs=1M seek=40 count=1 oflag=direct conv=fsync 2>/dev/null"
d0=$("$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -o '"discard_ops":[0-9]*' | cut -d: -f2)
check "the guest discards it (blkdiscard)" run_in_guest "$vmx" "blkdiscard -o 41943040 -l 1048576 /dev/vda"
check "the discarded range reads zeros in the guest" run_in_guest "$vmx" \
	"echo 3 > /proc/sys/vm/drop_caches; a=\$(dd if=/dev/vda bs=1M skip=40 count=1 iflag=direct 2>/dev/null | md5sum); b=\$(dd if=/dev/zero bs=1M count=1 2>/dev/null | md5sum); [ \"\$a\" = \"\$b\" ] && echo DISCARD-\$((40+2))-ZERO"
check "... DISCARD-42-ZERO" console_has "$vmx" "DISCARD-42-ZERO"
d1=$("$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -o '"discard_ops":[0-9]*' | cut -d: -f2)
check "disk-stats counts the discard ($d0 -> $d1)" test "$d1" -ge $((d0 + 1))
check "disk-stats prints a table" sh -c "'$VELA' vm disk-stats '$vmx' | grep -q '^virtio0:0 .*live.vmdk'"

# ---- an IOPS limit holds under a saturating guest workload (4 readers)
check "disk-limit --iops 50" "$VELA" vm disk-limit --iops 50 "$vmx" virtio0:0
check "the guest starts 4 direct readers" run_in_guest "$vmx" \
	"for k in 1 2 3 4; do dd if=/dev/vda of=/dev/null bs=4096 skip=\$((k*1000)) count=400 iflag=direct 2>/dev/null & done"
sleep 1.5
r0=$("$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -o '"rd_ops":[0-9]*' | cut -d: -f2); t0=$(date +%s%N)
sleep 5
r1=$("$VELA" vm disk-stats --json "$vmx" | tr -d ' \n' | grep -o '"rd_ops":[0-9]*' | cut -d: -f2); t1=$(date +%s%N)
iops=$(( (r1 - r0) * 1000000000 / (t1 - t0) ))
echo "measured $iops IOPS under a limit of 50"
check "the disk stays within 50 IOPS +-10% ($iops)" test "$iops" -ge 45 -a "$iops" -le 55
check "disk-limit 0 removes the limit" "$VELA" vm disk-limit --iops 0 "$vmx" virtio0:0
check "disk-limit refuses a disk the VM lacks" sh -c "! '$VELA' vm disk-limit --iops 5 '$vmx' scsi3:3"
expect_error VELA_E_RANGE "commit without a redo log is refused" "$VELA" vm commit "$vmx" virtio0:0

# ---- the supervisor dies right after a live addredo: nothing acknowledged is lost
check "addredo before the crash" "$VELA" vm addredo "$vmx" virtio0:0
check "the guest writes CRASH-SAFE and flushes" run_in_guest "$vmx" "printf CRASH-SAFE | dd of=/dev/vda bs=512 seek=0 conv=notrunc,fsync oflag=direct 2>/dev/null"
sup=$("$VELA" vm status --json "$vmx" | tr -d ' \n' | grep -o '"supervisor_pid":[0-9]*' | cut -d: -f2)
check "kill -9 the supervisor" kill -9 "$sup"
check "the VM is off after the crash" wait_state "$vmx" off 10
check "power on after the crash" "$VELA" vm start "$vmx"
check "the guest is up again" wait_console "$vmx" VELA-GUEST-READY 1 60
check "the guest sees its acknowledged write after the crash" console_has "$vmx" "VELA-GUEST-DISK: vda sectors=131072 first64=CRASH-SAFE"
check "commit after the crash" "$VELA" vm commit "$vmx" virtio0:0

# ---- the supervisor dies in the middle of a live commit of 16 MiB
check "addredo before a big commit" "$VELA" vm addredo "$vmx" virtio0:0
check "the guest writes 16 MiB of random data and flushes" run_in_guest "$vmx" \
	"dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null; dd if=/tmp/pat of=/dev/vda bs=1M seek=8 oflag=direct conv=fsync 2>/dev/null; echo PAT-\$((40+2))-\$(md5sum < /tmp/pat | cut -c1-32)"
want=$("$VELA" vm console --dump "$vmx" | grep -a -o 'PAT-42-[0-9a-f]*' | tail -n1 | cut -d- -f3)
check "commit --no-wait starts the merge" "$VELA" vm commit --no-wait "$vmx" virtio0:0
sup=$("$VELA" vm status --json "$vmx" | tr -d ' \n' | grep -o '"supervisor_pid":[0-9]*' | cut -d: -f2)
check "kill -9 the supervisor during the commit" kill -9 "$sup"
check "the VM is off" wait_state "$vmx" off 10
check "the chain the .vmx names opens and passes qemu-img check" qemu-img check -q "$dir/$(vmx_file)"
check "power on after the crash in the commit" "$VELA" vm start "$vmx"
check "the guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
check "the guest reads its 16 MiB back" run_in_guest "$vmx" \
	"echo GOT-\$((40+2))-\$(dd if=/dev/vda bs=1M skip=8 count=16 iflag=direct 2>/dev/null | md5sum | cut -c1-32)"
got=$("$VELA" vm console --dump "$vmx" | grep -a -o 'GOT-42-[0-9a-f]*' | tail -n1 | cut -d- -f3)
check "no flushed write was lost to the crash in the commit ($want = $got)" test -n "$want" -a "$want" = "$got"
# The crash may have left the helper redo log on top of the half-merged one:
# commits fold the chain down to the base again.
for _ in 1 2 3; do depth_is 1 && break; "$VELA" vm commit "$vmx" virtio0:0 >/dev/null; done
check "commits after the crash bring the disk back to its base" depth_is 1
check "the .vmx names the base at the end" test "$(vmx_file)" = live.vmdk
check "hard reset (the device resets its rings)" "$VELA" vm reset hard "$vmx"
check "the guest comes back after the reset" wait_console "$vmx" VELA-GUEST-READY 2 60
check "... and sees its disk over vhost-user-blk again" sh -c "test \$('$VELA' vm console --dump '$vmx' | grep -a -c 'VELA-GUEST-DISK: vda sectors=131072') -ge 2"

check "stop" "$VELA" vm stop hard "$vmx"
check "the final image passes qemu-img check" qemu-img check -q "$dir/live.vmdk"
check "qemu-img reads the guest's blocks from the final image" sh -c \
	"qemu-img convert -O raw '$dir/live.vmdk' '$dir/final.raw' && for i in 1 2 777 $N; do dd if='$dir/final.raw' bs=512 skip=\$i count=1 2>/dev/null | head -c 8 | grep -q \$(printf BLK%05d \$i) || exit 1; done"
finish
