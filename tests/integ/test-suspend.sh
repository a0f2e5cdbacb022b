#!/bin/bash
# Suspend and resume of the real test guest: its counting loop goes on
# where it stopped; the clock is corrected; resume.repeatable resumes twice
# from the same state with the disks as they were; a changed configuration
# or disk, or an unfinished state file, is refused with the reason; power
# off discards the state; suspend.directory; velad's suspend and resume.
source "$(dirname "$0")/lib.sh"

first_tick() {   # the first tick number on a fresh console
	"$VELA" vm console --dump "$1" | grep -a -o 'VELA-GUEST-TICK [0-9]*' | head -n1 | awk '{print $2}'
}
wait_ticks() {   # wait_ticks VMX: some ticks on the console
	wait_console "$1" "VELA-GUEST-TICK" 3 30
}
# The console of a resumed VM starts empty: an empty line makes the guest's
# shell show its prompt again, for run_in_guest.
new_prompt() { "$VELA" vm console --send '\n' "$1" >/dev/null; }

# The first VM's disk is virtio-blk (served over vhost-user-blk, whose
# device state QEMU saves too); the repeatable one's is on virtio-scsi (NBD).
vmx=$(make_vm sus "$CMDLINE_TICK" 'virtio0:0.present = "TRUE"' 'virtio0:0.fileName = "disk.img"' 'tools.heartbeatTimeout = "5"')
dir=$(dirname "$vmx")
expect_error VELA_E_NOTRUNNING "suspend of an off VM is refused" "$VELA" vm suspend "$vmx"
expect_error VELA_E_BADSTATE "resume of an off VM is refused" "$VELA" vm resume "$vmx"
check "power on" "$VELA" vm start "$vmx"
check "the guest counts" wait_console "$vmx" "VELA-GUEST-TICK 15" 1 60
check "the agent runs" wait_console "$vmx" "connected to the host" 1 30
check "suspend" "$VELA" vm suspend "$vmx"
n=$(last_tick "$vmx" 2>/dev/null)
[ -n "$n" ] || n=$(cat "$VELA_HOME/last-tick" 2>/dev/null)
check "state: suspended" sh -c "[ \"\$('$VELA' vm getstate '$vmx')\" = suspended ]"
check "the state file is in the VM's folder" test -s "$dir/sus.vmss"
check "the .vmx names it" grep -q 'checkpoint.vmState = "sus.vmss"' "$vmx"
check "no supervisor while suspended" sh -c "! ls '$VELA_HOME'/run/vm/*/pid 2>/dev/null | grep -q ."
check "event: suspended" grep -q "event: VM suspended to" "$dir/vela.log"
sleep 4   # the guest's clock falls behind while it is suspended
check "resume" "$VELA" vm resume "$vmx"
check "state: on" wait_state "$vmx" on 10
check "ticks after the resume" wait_ticks "$vmx"
# The console of the resumed VM starts empty: what it shows first is the
# tick after the last one before the suspend, and no boot.
t=$(first_tick "$vmx")
echo "suspended near tick ${n:-?}, first tick after the resume: $t"
if [ -n "$t" ] && [ "$t" -gt 15 ]; then pass "the counting loop continued (tick $t), no reboot"; else fail "the counting loop restarted (first tick $t)"; fi
if console_has "$vmx" "VELA-GUEST: kernel"; then fail "the guest booted again"; else pass "no boot after the resume"; fi
# (removed in the background once the VM runs: a big file takes a moment)
check "the state file is gone after the resume" sh -c "for i in \$(seq 50); do [ -e '$dir/sus.vmss' ] || exit 0; sleep 0.1; done; exit 1"
check "the .vmx no longer names it" sh -c "! grep -q checkpoint.vmState '$vmx'"
check "the guest's clock was corrected" wait_console "$vmx" "clock set by the host (resume)" 1 20
check "post-resume command ran in the guest" wait_console "$vmx" "VELA-GUEST-POST-RESUME ran" 1 20
check "event: clock corrected" grep -q "event: guest clock corrected by" "$dir/vela.log"
new_prompt "$vmx"
check "the guest clock matches the host" run_in_guest "$vmx" 'echo GUEST-EPOCH=$(date +%s)'
g=$("$VELA" vm console --dump "$vmx" | grep -a -o 'GUEST-EPOCH=[0-9]*' | tail -n1 | cut -d= -f2)
d=$(( $(date +%s) - ${g:-0} )); d=${d#-}
if [ "$d" -le 2 ]; then pass "guest clock within ${d} s of the host after the resume"; else fail "guest clock off by $d s after the resume"; fi
check "the virtio-blk disk works after the resume" run_in_guest "$vmx" 'echo 3 > /proc/sys/vm/drop_caches; echo VDA=$(dd if=/dev/vda bs=13 count=1 2>/dev/null)'
check "virtio-blk disk read after resume" console_has "$vmx" "VDA=VELA-DISK-sus"
check "and takes writes" run_in_guest "$vmx" 'printf AFTER-RESUME | dd of=/dev/vda bs=512 seek=8 conv=notrunc,fsync 2>/dev/null; echo WROTE-$((40+2))'
check "the write reached the disk file" sh -c "dd if='$dir/disk.img' bs=512 skip=8 count=1 2>/dev/null | grep -q AFTER-RESUME"

# Paused VMs suspend too; a second suspend is refused while suspended.
check "pause" "$VELA" vm pause "$vmx"
check "suspend a paused VM" "$VELA" vm suspend "$vmx"
expect_error VELA_E_NOTRUNNING "suspend of a suspended VM is refused" "$VELA" vm suspend "$vmx"

# A changed configuration: refused with the reason, and nothing changes.
sed -i 's/^memsize = "256"/memsize = "320"/' "$vmx"
expect_error VELA_E_BADSTATE "resume with a changed memsize is refused" "$VELA" vm resume "$vmx"
out=$("$VELA" vm resume "$vmx" 2>&1)
if echo "$out" | grep -q 'was "[^"]*256[^"]*", now "[^"]*320[^"]*"'; then pass "the refusal says what changed"; else fail "refusal text: $out"; fi
check "still suspended after the refusal" sh -c "[ \"\$('$VELA' vm getstate '$vmx')\" = suspended ]"
check "the state file is kept after the refusal" test -s "$dir/sus.vmss"
sed -i 's/^memsize = "320"/memsize = "256"/' "$vmx"
# A changed disk: refused too.
cp -p "$dir/disk.img" "$VELA_HOME/disk.bak"
printf 'CHANGED' | dd of="$dir/disk.img" bs=1 seek=4096 conv=notrunc status=none
expect_error VELA_E_BADSTATE "resume after the disk changed is refused" "$VELA" vm resume "$vmx"
cp -p "$VELA_HOME/disk.bak" "$dir/disk.img"
check "resume once the configuration and disk are back" "$VELA" vm resume "$vmx"
check "on again" wait_state "$vmx" on 10
check "ticks again" wait_ticks "$vmx"

# Powering off a suspended VM discards its state.
check "suspend again" "$VELA" vm suspend "$vmx"
check "power off the suspended VM" "$VELA" vm stop "$vmx"
check "state: off" sh -c "[ \"\$('$VELA' vm getstate '$vmx')\" = off ]"
check "the state file is discarded" test ! -e "$dir/sus.vmss"
check "the .vmx no longer names a state" sh -c "! grep -q checkpoint.vmState '$vmx'"

# An interrupted suspend (no trailer) never loads.
check "start for the interrupted case" "$VELA" vm start "$vmx"
check "boots" wait_ticks "$vmx"
check "suspend" "$VELA" vm suspend "$vmx"
truncate -s -10 "$dir/sus.vmss"
expect_error VELA_E_CORRUPT "a state file without its trailer is refused" "$VELA" vm resume "$vmx"
check "discard it" "$VELA" vm stop "$vmx"

# resume.repeatable: the same state twice, with the disk as it was.
vmx2=$(make_vm rep "$CMDLINE_TICK" "${SCSI_DISK[@]}" 'resume.repeatable = "TRUE"' 'suspend.directory = "states"')
dir2=$(dirname "$vmx2")
check "power on (repeatable)" "$VELA" vm start "$vmx2"
check "counts (repeatable)" wait_console "$vmx2" "VELA-GUEST-TICK 10" 1 60
check "suspend (repeatable)" "$VELA" vm suspend "$vmx2"
check "the state goes to suspend.directory" test -s "$dir2/states/rep.vmss"
for round in 1 2; do
	check "resume #$round" "$VELA" vm resume "$vmx2"
	check "ticks (#$round)" wait_ticks "$vmx2"
	t=$(first_tick "$vmx2")
	eval "t$round=$t"
	check "the state file is kept (#$round)" test -s "$dir2/states/rep.vmss"
	new_prompt "$vmx2"
	check "the disk is as it was at the suspend (#$round)" run_in_guest "$vmx2" 'echo FIRST=$(dd if=/dev/sda bs=13 count=1 2>/dev/null)'
	check "disk content (#$round)" sh -c "'$VELA' vm console --dump '$vmx2' | grep -a -q 'FIRST=VELA-DISK-rep'"
	check "the guest writes its disk (#$round)" run_in_guest "$vmx2" 'printf SESSION-WROTE | dd of=/dev/sda conv=notrunc,fsync 2>/dev/null; echo W-$((40+2))'
	check "power off (#$round)" "$VELA" vm stop hard "$vmx2"
	check "suspended again after the power off (#$round)" sh -c "[ \"\$('$VELA' vm getstate '$vmx2')\" = suspended ]"
done
if [ -n "$t1" ] && [ "$t1" = "$t2" ]; then pass "both resumes continue from the same tick ($t1)"; else fail "resumes continued from ticks $t1 and $t2"; fi
check "the base disk was never written" sh -c "head -c 14 '$dir2/disk.img' | grep -q VELA-DISK-rep"
check "no repeat logs left behind" sh -c "! ls '$dir2' | grep -q REPEAT"

# Through velad: suspend and resume by name, and the state in the list.
check "velad starts" velad_start
check "velad: register" "$VELA" vm register "$vmx2"
check "velad: a suspended VM is listed as suspended" sh -c "'$VELA' --json vm list | jq -e '.. | objects | select(.name? == \"rep\") | .state == \"suspended\"'"
check "velad: resume" "$VELA" vm resume rep
check "velad: on" sh -c "[ \"\$('$VELA' vm getstate rep)\" = on ]"
check "velad: suspend" "$VELA" vm suspend rep
check "velad: suspended" sh -c "[ \"\$('$VELA' vm getstate rep)\" = suspended ]"
check "velad: start resumes a suspended VM" "$VELA" vm start rep
check "velad: on again" sh -c "[ \"\$('$VELA' vm getstate rep)\" = on ]"
check "velad: stop hard (repeatable: suspended again)" "$VELA" vm stop rep hard
check "velad: power off discards the state" "$VELA" vm stop rep hard
check "velad: off" sh -c "[ \"\$('$VELA' vm getstate rep)\" = off ]"
check "velad: suspend and resume are events" sh -c "'$VELA' event list --vm rep | grep -q suspend"
velad_stop
finish
