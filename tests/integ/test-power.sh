#!/bin/bash
# Power operations and the state machine, checked from inside the guest.
# These guests run without the guest agent (vela.noagent=1): soft operations
# use the ACPI power button here; test-guest-agent.sh covers the agent's way.
. "$(dirname "$0")/lib.sh"

vmx=$(make_vm power1 "${SCSI_DISK[@]}" 'boot.cmdline = "console=ttyS0 quiet panic=-1 vela.cmdloop=1 vela.tick=1 vela.noagent=1"')
log=$(dirname "$vmx")/vela.log

# ---- invalid requests on an off VM change nothing
expect_error VELA_E_NOTRUNNING "pause of an off VM is refused" "$VELA" vm pause "$vmx"
expect_error VELA_E_NOTRUNNING "stop of an off VM is refused" "$VELA" vm stop hard "$vmx"
expect_error VELA_E_NOTRUNNING "reset of an off VM is refused" "$VELA" vm reset hard "$vmx"
expect_error VELA_E_NOTFOUND "start of a missing .vmx is refused" "$VELA" vm start "$VELA_HOME/nope.vmx"

check "start" "$VELA" vm start "$vmx"
check "guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
expect_error VELA_E_BADSTATE "start of a running VM is refused" "$VELA" vm start "$vmx"
expect_error VELA_E_BADSTATE "unpause of a running VM is refused" "$VELA" vm unpause "$vmx"
expect_error VELA_E_INVAL "an unknown power mode is refused" "$VELA" vm stop gently "$vmx"
check "the VM is still on after the refusals" test "$(state_of "$vmx")" = on

# ---- pause freezes the guest; unpause resumes it
check "the guest's tick counter runs" wait_console "$vmx" "VELA-GUEST-TICK 5" 1 30
check "pause" "$VELA" vm pause "$vmx"
check "state is paused" test "$(state_of "$vmx")" = paused
t1=$(last_tick "$vmx")
sleep 2
t2=$(last_tick "$vmx")
if [ -n "$t1" ] && [ "$t1" = "$t2" ]; then pass "console stops advancing while paused (tick $t1)"; else fail "console stops advancing while paused ($t1 -> $t2)"; fi
expect_error VELA_E_BADSTATE "pause of a paused VM is refused" "$VELA" vm pause "$vmx"
expect_error VELA_E_BADSTATE "soft stop of a paused VM is refused" "$VELA" vm stop soft "$vmx"
check "still paused after the refusals" test "$(state_of "$vmx")" = paused
check "unpause" "$VELA" vm unpause "$vmx"
check "state is on" test "$(state_of "$vmx")" = on
sleep 1.5
t3=$(last_tick "$vmx")
if [ -n "$t3" ] && [ "$t3" -gt "$t2" ]; then pass "console advances again after unpause ($t2 -> $t3)"; else fail "console advances again after unpause ($t2 -> $t3)"; fi

# ---- hard reset: the guest boots a second time in the same VM
check "reset hard" "$VELA" vm reset hard "$vmx"
check "guest boots again after a hard reset" wait_console "$vmx" VELA-GUEST-READY 2 60
check "state is on after reset" test "$(state_of "$vmx")" = on

# ---- soft reset: ACPI power button, clean guest shutdown, then a new boot
check "reset soft" "$VELA" vm reset soft "$vmx"
check "the guest shut down cleanly during the soft reset" wait_console "$vmx" "power button pressed, shutting down cleanly" 1 10
check "guest boots again after a soft reset" wait_console "$vmx" VELA-GUEST-READY 3 60
check "soft reset is in the VM log" grep -q "guest shut down (guest-shutdown); resetting" "$log"

# ---- soft stop: the guest's own shutdown message is seen on the console
"$VELA" vm console --wait "power button pressed, shutting down cleanly" --timeout 30 "$vmx" > "$VELA_HOME/waiter.out" 2>&1 &
waiter=$!
sleep 0.5
out=$("$VELA" vm stop soft "$vmx")
check "stop soft answers off" test "$out" = off
if wait $waiter; then pass "the guest printed its own clean-shutdown message"; else fail "the guest printed its own clean-shutdown message: $(cat "$VELA_HOME/waiter.out")"; fi
check "state is off after stop soft" test "$(state_of "$vmx")" = off
check "VM log: guest powered off (guest-shutdown)" grep -q "guest powered off (guest-shutdown)" "$log"

# ---- QEMU killed behind our back: the VM is off, with an event in its log
check "start again" "$VELA" vm start "$vmx"
check "guest is up" wait_console "$vmx" VELA-GUEST-READY 1 60
qemu_pid=$("$VELA" --json vm status "$vmx" | sed -n 's/.*"qemu_pid": \([0-9]*\).*/\1/p')
kill -9 "$qemu_pid"
check "VM is off after QEMU was killed" wait_state "$vmx" off 10
check "VM log records the unexpected exit" grep -q "event: QEMU exited unexpectedly (killed by signal 9" "$log"
check "no zombie QEMU is left" sh -c "! ps -o stat= -p $qemu_pid 2>/dev/null | grep -q Z"
check "the VM can be started again" "$VELA" vm start "$vmx"
check "stop hard" "$VELA" vm stop hard "$vmx"

# ---- a guest that ignores the power button
vmx2=$(make_vm deaf "${SCSI_DISK[@]}" 'boot.cmdline = "console=ttyS0 quiet panic=-1 vela.nopowerbutton=1 vela.noagent=1"')
check "start the deaf guest" "$VELA" vm start "$vmx2"
check "deaf guest is up" wait_console "$vmx2" VELA-GUEST-READY 1 60
expect_error VELA_E_TIMEOUT "soft stop times out on a guest that ignores the power button" "$VELA" vm stop soft --timeout 2 "$vmx2"
check "the deaf guest is still on after the failed soft stop" test "$(state_of "$vmx2")" = on
expect_error VELA_E_TIMEOUT "soft reset times out too" "$VELA" vm reset soft --timeout 2 "$vmx2"
check "the deaf guest is still on" test "$(state_of "$vmx2")" = on
out=$("$VELA" vm stop trysoft --timeout 2 "$vmx2")
check "trysoft falls back to a hard power off" test "$out" = off
check "VM log records the fallback" grep -q "falling back to hard power off" "$(dirname "$vmx2")/vela.log"

# ---- a signal to the supervisor powers the VM off cleanly
check "start for SIGTERM" "$VELA" vm start "$vmx"
sup=$("$VELA" --json vm status "$vmx" | sed -n 's/.*"supervisor_pid": \([0-9]*\).*/\1/p')
kill -TERM "$sup"
check "SIGTERM to the supervisor powers the VM off" wait_state "$vmx" off 10
finish
