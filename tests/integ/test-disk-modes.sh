#!/bin/bash
# Disk modes served by Vela's engine (vhost-user-blk disks), checked from
# inside the guest across power cycles: undoable asks at power-off and
# honours commit, discard and keep; append keeps its redo log until an
# administrator commits it; the base files never change behind the modes.
. "$(dirname "$0")/lib.sh"

vmx=$(make_vm modes "$CMDLINE" \
	'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "undo.img"' 'virtio0:0.mode = "undoable"' \
	'virtio0:1.present = "TRUE"' 'virtio0:1.fileName = "append.img"' 'virtio0:1.mode = "append"')
dir=$(dirname "$vmx")
truncate -s 64M "$dir/undo.img"
printf 'UNDO-BASE' | dd of="$dir/undo.img" conv=notrunc status=none
truncate -s 16M "$dir/append.img"
printf 'APPEND-BASE' | dd of="$dir/append.img" conv=notrunc status=none

# guest_write SECTORS TEXT: write TEXT at the start of the disk of that size.
guest_write() {
	run_in_guest "$vmx" "for b in /sys/block/vd*; do [ \$(cat \$b/size) = $1 ] && printf $2 | dd of=/dev/\${b##*/} conv=notrunc 2>/dev/null; done; sync"
}
host_has() { head -c "${#2}" "$1" | grep -q "^$2"; }
boot() {
	check "$1: start" "$VELA" vm start "$vmx"
	check "$1: guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
}
guest_sees() { console_has "$vmx" "VELA-GUEST-DISK: vd. sectors=$1 first64=$2"; }

# ---- cycle 1: write both, keep
boot "cycle 1"
check "cycle 1: the guest writes both disks" guest_write 131072 CYCLE1-UNDO
guest_write 32768 CYCLE1-APPEND >/dev/null
check "cycle 1: soft power-off" "$VELA" vm stop soft "$vmx"
check "undoable: at power-off the VM is stuck on a question" test "$(state_of "$vmx")" = stuck
check "undoable: the question offers commit, discard and keep" sh -c "'$VELA' vm status --json '$vmx' | tr -d ' \\n' | grep -q '\"choices\":\\[\"commit\",\"discard\",\"keep\"\\]'"
expect_error VELA_E_INVAL "undoable: an answer that is not a choice is refused" "$VELA" vm answer "$vmx" maybe
check "undoable: ... and the question stays" test "$(state_of "$vmx")" = stuck
check "undoable: the base file is untouched before the answer" host_has "$dir/undo.img" UNDO-BASE
check "undoable: answer keep" "$VELA" vm answer "$vmx" keep
check "undoable: after the answer the VM is off" wait_state "$vmx" off 10
check "undoable keep: the redo log stays" test -f "$dir/undo-REDO.qcow2"
check "undoable keep: the base file is untouched" host_has "$dir/undo.img" UNDO-BASE
check "append: the redo log stays, nothing asked for it" test -f "$dir/append-REDO.qcow2"
check "append: the base file is untouched" host_has "$dir/append.img" APPEND-BASE

# ---- cycle 2: the kept log continues; write, discard
boot "cycle 2"
check "undoable keep: the next session sees the kept writes" guest_sees 131072 CYCLE1-UNDO
check "append: the next session sees the logged writes" guest_sees 32768 CYCLE1-APPEND
check "cycle 2: the guest writes both disks" guest_write 131072 CYCLE2-UNDO
guest_write 32768 CYCLE2-APPEND >/dev/null
check "cycle 2: soft power-off" "$VELA" vm stop soft "$vmx"
check "cycle 2: stuck on the question" test "$(state_of "$vmx")" = stuck
check "undoable: answer discard" "$VELA" vm answer "$vmx" discard
check "undoable discard: the redo log is gone" test ! -e "$dir/undo-REDO.qcow2"
check "undoable discard: the base file is untouched" host_has "$dir/undo.img" UNDO-BASE

# ---- cycle 3: discarded writes are gone; write, commit
boot "cycle 3"
check "undoable discard: the guest sees the base again" guest_sees 131072 UNDO-BASE
check "append: both sessions' writes are there" guest_sees 32768 CYCLE2-APPEND
check "cycle 3: the guest writes the undoable disk" guest_write 131072 CYCLE3-UNDO
check "cycle 3: hard power-off" "$VELA" vm stop hard "$vmx"
check "cycle 3: a hard power-off asks too" test "$(state_of "$vmx")" = stuck
check "undoable: answer commit" "$VELA" vm answer "$vmx" commit
check "undoable commit: the base file holds the guest's write" host_has "$dir/undo.img" CYCLE3-UNDO
check "undoable commit: the redo log is gone" test ! -e "$dir/undo-REDO.qcow2"
check "undoable commit: qemu-io reads the guest's write from the base" sh -c \
	"qemu-io -f raw -r -c 'read -v 0 16' '$dir/undo.img' | grep -q 'CYCLE3.UNDO'"

# ---- append: an administrator commits the log offline
check "append: the base is still untouched" host_has "$dir/append.img" APPEND-BASE
check "append: vela disk commit merges the log" "$VELA" disk commit "$dir/append-REDO.qcow2"
check "append: the base now holds the guest's writes" host_has "$dir/append.img" CYCLE2-APPEND


# ---- nonpersistent on vhost-user-blk: writes vanish at power-off, a
# temporary log a crash left behind is replaced, never used
vmx=$(make_vm np "$CMDLINE" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "np.vmdk"' \
	'virtio0:0.mode = "nonpersistent"')
dir=$(dirname "$vmx")
"$VELA" disk create -s 32m "$dir/np.vmdk" >/dev/null
qemu-io -f vmdk -c "write -P 0x4e 0 512" "$dir/np.vmdk" >/dev/null
check "nonpersistent: start" "$VELA" vm start "$vmx"
check "nonpersistent: guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
check "nonpersistent: the guest writes" run_in_guest "$vmx" "printf NP-WRITE | dd of=/dev/vda conv=notrunc 2>/dev/null; sync"
check "nonpersistent: the write goes to a temporary log" test -f "$dir/np-TEMP.vmdk"
check "nonpersistent: stop" "$VELA" vm stop hard "$vmx"
check "nonpersistent: no question" test "$(state_of "$vmx")" = off
check "nonpersistent: the temporary log is gone" test ! -e "$dir/np-TEMP.vmdk"
check "nonpersistent: the disk still reads its old content (qemu-io)" sh -c \
	"qemu-io -f vmdk -c 'read -P 0x4e 0 512' '$dir/np.vmdk' | grep -q 'read 512/512'"
check "nonpersistent: the disk passes qemu-img check" qemu-img check -q "$dir/np.vmdk"
finish
