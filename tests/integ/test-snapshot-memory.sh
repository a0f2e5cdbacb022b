#!/bin/bash
# Snapshots with memory: reverting twice to the same snapshot brings the
# guest back to the same instant (its counting loop and a file in its RAM
# disk), running; a quiesced disk snapshot runs the guest's freeze scripts;
# deleting the snapshot removes its memory file; velad does the same.
source "$(dirname "$0")/lib.sh"

first_tick() { "$VELA" vm console --dump "$1" | grep -a -o 'VELA-GUEST-TICK [0-9]*' | head -n1 | awk '{print $2}'; }
new_prompt() { "$VELA" vm console --send '\n' "$1" >/dev/null; }

vmx=$(make_vm mem "$CMDLINE_TICK" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "disk.img"')
dir=$(dirname "$vmx")
expect_error VELA_E_BADSTATE "a memory snapshot of an off VM is refused" "$VELA" vm snapshot create --memory "$vmx" nope
check "power on" "$VELA" vm start "$vmx"
check "the guest counts" wait_console "$vmx" "VELA-GUEST-TICK 10" 1 60
check "a file in the guest's RAM" run_in_guest "$vmx" 'echo before-snapshot > /tmp/state'
check "snapshot with memory" "$VELA" vm snapshot create --memory "$vmx" point
check "the memory file exists" test -s "$dir/mem-Snapshot1.vmsn"
check "the list shows it with memory" sh -c "'$VELA' vm snapshot list '$vmx' | grep -q 'point (current) \[memory\]'"
check "the VM runs on after the snapshot" wait_state "$vmx" on 5
check "the guest changes its file" run_in_guest "$vmx" 'echo after-snapshot > /tmp/state'
check "and counts on" wait_console "$vmx" "VELA-GUEST-TICK 40" 1 60
for round in 1 2; do
	check "revert #$round" "$VELA" vm snapshot revert "$vmx" point
	check "running after revert #$round" wait_state "$vmx" on 10
	check "ticks after revert #$round" wait_console "$vmx" "VELA-GUEST-TICK" 2 30
	eval "t$round=$(first_tick "$vmx")"
	new_prompt "$vmx"
	check "read the file (#$round)" run_in_guest "$vmx" 'echo STATE=$(cat /tmp/state)'
	check "the guest's file is as at the snapshot (#$round)" console_has "$vmx" "STATE=before-snapshot"
	if console_has "$vmx" "VELA-GUEST: kernel"; then fail "the guest booted (#$round)"; else pass "no boot at revert #$round"; fi
	check "the guest clock was set at revert #$round" wait_console "$vmx" "clock set by the host" 1 20
	check "the guest writes after revert #$round" run_in_guest "$vmx" 'echo after-snapshot > /tmp/state; sync'
done
if [ -n "$t1" ] && [ "$t1" = "$t2" ]; then pass "both reverts continue from the same tick ($t1)"; else fail "reverts continued from ticks $t1 and $t2"; fi
check "the memory file is kept for the next revert" test -s "$dir/mem-Snapshot1.vmsn"
check "no suspended state is left named in the .vmx" sh -c "! grep -q checkpoint '$vmx'"

# A quiesced disk snapshot: the agent freezes and thaws.
check "quiesced snapshot" "$VELA" vm snapshot create --quiesce "$vmx" quiet
check "pre-freeze script ran" wait_console "$vmx" "VELA-GUEST-PRE-FREEZE ran" 1 10
check "post-thaw script ran" wait_console "$vmx" "VELA-GUEST-POST-THAW ran" 1 10
check "the quiesced snapshot has no memory" sh -c "'$VELA' --json vm snapshot list '$vmx' | jq -e '.[] | select(.name == \"quiet\") | .memory == false'"
check "stop" "$VELA" vm stop hard "$vmx"
check "delete the memory snapshot" "$VELA" vm snapshot delete "$vmx" point
check "its memory file is gone" test ! -e "$dir/mem-Snapshot1.vmsn"

# A refused revert: the hardware changed since the memory snapshot.
check "start again" "$VELA" vm start "$vmx"
check "counts again" wait_console "$vmx" "VELA-GUEST-TICK 5" 1 60
check "second memory snapshot" "$VELA" vm snapshot create --memory "$vmx" second
check "stop" "$VELA" vm stop hard "$vmx"
sed -i 's/^memsize = "256"/memsize = "288"/' "$vmx"
expect_error VELA_E_BADSTATE "reverting into a changed machine: the resume is refused" "$VELA" vm snapshot revert "$vmx" second
check "the VM waits, suspended at the snapshot" sh -c "[ \"\$('$VELA' vm getstate '$vmx')\" = suspended ]"
expect_error VELA_E_BADSTATE "start refuses too, with the reason" "$VELA" vm start "$vmx"
sed -i 's/^memsize = "288"/memsize = "256"/' "$vmx"
check "with the hardware back, it resumes" "$VELA" vm start "$vmx"
check "running from the snapshot" wait_console "$vmx" "VELA-GUEST-TICK" 2 30
check "stop" "$VELA" vm stop hard "$vmx"
check "the snapshot's memory survives the power-off" sh -c "ls '$dir'/mem-Snapshot*.vmsn"
finish
