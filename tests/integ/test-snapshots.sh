#!/bin/bash
# Disk snapshots with a tree (.vmsd): taken live while the guest runs and
# offline, reverted (the guest sees the snapshot's content), deleted with
# their images merged (live too), checked from inside the guest and with
# qemu-img.  Independent disks stay out.
. "$(dirname "$0")/lib.sh"

vmx=$(make_vm snap "$CMDLINE" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "sys.vmdk"' \
	'virtio0:1.present = "TRUE"' 'virtio0:1.fileName = "indep.img"' 'virtio0:1.mode = "independent-persistent"')
dir=$(dirname "$vmx")
"$VELA" disk create -s 64m "$dir/sys.vmdk" >/dev/null
truncate -s 16M "$dir/indep.img"
disk_file() { sed -n 's/^virtio0:0.fileName = "\(.*\)"$/\1/p' "$vmx"; }
# gw TEXT: the guest writes TEXT at the start of the 64 MiB disk and flushes
gw() { run_in_guest "$vmx" "printf $1 | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null"; }
boot() {
	check "$1: start" "$VELA" vm start "$vmx"
	check "$1: guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
}
sees() { console_has "$vmx" "VELA-GUEST-DISK: vda sectors=131072 first64=$1"; }

check "no snapshots at first" sh -c "'$VELA' vm snapshot list '$vmx' | grep -q 'no snapshots'"
boot "session 1"
check "the guest writes STATE-A" gw STATE-A
out=$("$VELA" vm snapshot create --description "before B" "$vmx" snapA)
check "snapshot A taken live" sh -c "echo '$out' | grep -q 'snapshot \"snapA\" taken (1 disk, live)'"
check "the independent disk is left out" sh -c "echo '$out' | grep -q 'virtio0:1: independent-persistent disk, not in snapshots'"
check "the .vmsd records it" grep -q 'snapshot0.displayName = "snapA"' "$dir/snap.vmsd"
check "the guest writes STATE-B" gw STATE-B
check "snapshot B taken live" "$VELA" vm snapshot create "$vmx" snapB
check "the guest writes STATE-C" gw STATE-C
expect_error VELA_E_EXISTS "a second snapshot with the same name is refused" "$VELA" vm snapshot create "$vmx" snapB
expect_error VELA_E_BADSTATE "revert while the VM runs is refused" "$VELA" vm snapshot revert "$vmx" snapA
check "the tree lists B under A, B current" sh -c "'$VELA' vm snapshot list '$vmx' | tr '\n' '|' | grep -q '^snapA .*before B|  snapB (current)'"
check "stop" "$VELA" vm stop hard "$vmx"

check "revert to A" "$VELA" vm snapshot revert "$vmx" snapA
boot "after revert to A"
check "the guest sees STATE-A after the revert" sees STATE-A
check "the guest writes STATE-D (a new branch from A)" gw STATE-D
check "snapshot D on the branch" "$VELA" vm snapshot create "$vmx" snapD
check "the tree has A with two branches (B and D)" sh -c "'$VELA' vm snapshot list --json '$vmx' | tr -d ' \n' | grep -q '\"name\":\"snapD\".*\"parent\":1'"
check "stop" "$VELA" vm stop hard "$vmx"

check "revert to B (the other branch)" "$VELA" vm snapshot revert "$vmx" snapB
boot "after revert to B"
check "the guest sees STATE-B" sees STATE-B
# A write/verify loop runs in the guest through live snapshot create and delete.
N=800
check "the guest starts a write loop" guest_writer_start "$vmx" $N 101
sleep 1
check "snapshot X taken live during the writes" "$VELA" vm snapshot create "$vmx" snapX
check "delete snapshot B while the VM runs (its image merges live)" "$VELA" vm snapshot delete "$vmx" snapB
check "delete snapshot X live during the writes" "$VELA" vm snapshot delete "$vmx" snapX
check "the writer finishes" wait_console "$vmx" "WRITER-42-DONE" 1 300
guest_verify "$vmx" $N 101
bad=$verify_result
check "the guest verifies every block" test -n "$bad"
check "the verification finishes" test -n "$bad"
check "no block lost across live snapshot create and deletes ($bad)" test "$bad" = VERIFY-42-BAD=0
check "the guest writes STATE-E" gw STATE-E
check "delete snapshot A live" "$VELA" vm snapshot delete "$vmx" snapA
check "the tree now has only D" sh -c "'$VELA' vm snapshot list '$vmx' | grep -c . | grep -qx 1"
check "stop" "$VELA" vm stop hard "$vmx"
boot "after the live deletes"
check "the guest still sees its latest write STATE-E" sees STATE-E
check "stop" "$VELA" vm stop hard "$vmx"

check "revert to D after A and B are gone" "$VELA" vm snapshot revert "$vmx" snapD
boot "after revert to D"
check "the guest sees STATE-D" sees STATE-D
check "stop" "$VELA" vm stop hard "$vmx"
check "delete D offline" "$VELA" vm snapshot delete "$vmx" snapD
check "no snapshots left" sh -c "'$VELA' vm snapshot list '$vmx' | grep -q 'no snapshots'"
top=$(disk_file)
check "the disk chain is short again (depth <= 2: base and one log)" sh -c "test \$('$VELA' disk info --json '$dir/$top' | grep -c '\"format\"') -le 2"
check "every image left passes qemu-img check" sh -c "for f in '$dir'/sys*.vmdk; do qemu-img check -q \"\$f\" || exit 1; done"
check "no image is left that nothing uses" sh -c "test \$(ls '$dir'/sys*.vmdk | wc -l) -le 2"
check "qemu-img reads STATE-D through the final chain" sh -c "qemu-io -f vmdk -r -c 'read -v 0 16' '$dir/$top' | grep -q 'STATE.D'"
finish
