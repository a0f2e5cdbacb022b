#!/bin/bash
# The guest agent (vela-guestd) in the real test guest: information,
# heartbeat lost and recovered, soft power operations through the agent
# with the guest's pre-commands, machine.id (and its isolation key),
# guestinfo both ways, the clock, quiesce of a real ext4 file system,
# zero-fill followed by compaction, and hostile messages from the guest.
source "$(dirname "$0")/lib.sh"

# guest_field VMX KEY: a top-level field of `vela --json vm guest`
guest_field() { "$VELA" --json vm guest "$1" 2>/dev/null | jq -r ".$2 // empty"; }
wait_guest() {   # wait_guest VMX FIELD VALUE [SECONDS]
	local i
	for ((i = 0; i < ${4:-30} * 5; i++)); do
		[ "$(guest_field "$1" "$2")" = "$3" ] && return 0
		sleep 0.2
	done
	return 1
}
log_has() { grep -q "$2" "$(dirname "$1")/vela.log"; }

# A data disk with a real ext4 file system, as a sparse VMDK (for zero-fill
# and compaction).
dir=$VELA_HOME/vms/agent
mkdir -p "$dir"
truncate -s 64M "$VELA_HOME/fs.raw"
mkfs.ext4 -q -F "$VELA_HOME/fs.raw"
"$VELA" disk convert "$VELA_HOME/fs.raw" "$dir/data.vmdk" -t monolithicSparse >/dev/null
vmx=$(make_vm agent "$CMDLINE" 'machine.id = "clone-0042"' 'guestinfo.color = "blue"' \
	'tools.heartbeatTimeout = "8"' 'scsi0.present = "TRUE"' 'scsi0.virtualDev = "virtio"' \
	'scsi0:0.present = "TRUE"' 'scsi0:0.fileName = "data.vmdk"')

check "power on" "$VELA" vm start "$vmx"
check "the guest boots" wait_console "$vmx" VELA-GUEST-READY
check "the agent says hello (agent running)" wait_guest "$vmx" agent running 30
check "heartbeat ok" wait_guest "$vmx" heartbeat ok 10
kernel=$("$VELA" vm console --dump "$vmx" | grep -a -o 'VELA-GUEST: kernel [^ ]*' | head -n1 | awk '{print $3}' | tr -d '\r')
info_kernel=$("$VELA" --json vm guest "$vmx" | jq -r .info.kernel)
if [ -n "$kernel" ] && [ "$info_kernel" = "$kernel" ]; then pass "guest info: kernel $kernel"; else fail "guest info: kernel '$info_kernel' vs '$kernel'"; fi
check "guest info: agent version" sh -c "'$VELA' --json vm guest '$vmx' | jq -e '.info.agent | startswith(\"vela-guestd \")'"
check "guest info: memory" sh -c "'$VELA' --json vm guest '$vmx' | jq -e '.info.memory.total_kb > 100000'"
check "status carries the heartbeat" sh -c "'$VELA' --json vm status '$vmx' | jq -e '.guest.heartbeat == \"ok\"'"
check "event: guest agent running" log_has "$vmx" "event: guest agent running: vela-guestd"

# machine.id and guestinfo, read by programs in the guest.
check "machine.id reaches the guest" run_in_guest "$vmx" 'echo MID=$(vela-guestd machine-id)'
check "machine.id value" console_has "$vmx" "MID=clone-0042"
check "guestinfo from the .vmx reaches the guest" run_in_guest "$vmx" 'echo GI1=$(vela-guestd get color)'
check "guestinfo value" console_has "$vmx" "GI1=blue"
check "host sets guestinfo" "$VELA" vm guestinfo set "$vmx" greeting "hello world"
check "the guest reads it" run_in_guest "$vmx" 'echo GI2="$(vela-guestd get guestinfo.greeting)"'
check "guestinfo set by the host, seen in the guest" console_has "$vmx" "GI2=hello world"
check "the guest sets guestinfo" run_in_guest "$vmx" 'vela-guestd set build 7 && echo GI3-SET'
check "the host reads it" sh -c "[ \"\$('$VELA' vm guestinfo get '$vmx' build)\" = 7 ]"
expect_error VELA_E_NOTFOUND "an unset key is not found" "$VELA" vm guestinfo get "$vmx" nothere
expect_error VELA_E_INVAL "a hostile key is refused" "$VELA" vm guestinfo set "$vmx" '../x y' v
big=$(head -c 5000 /dev/zero | tr '\0' a)
expect_error VELA_E_TOOBIG "a value over 4096 bytes is refused" "$VELA" vm guestinfo set "$vmx" big "$big"
check "the guest is refused an unknown key" run_in_guest "$vmx" 'vela-guestd get nope || echo GI4-REFUSED'
check "unknown key refused in the guest" console_has "$vmx" "GI4-REFUSED"

# The clock: put the guest 1 hour behind, the host sets it.
check "guest clock set back an hour" run_in_guest "$vmx" 'date -s @$(( $(date +%s) - 3600 )) >/dev/null'
check "sync-time" "$VELA" vm sync-time "$vmx"
check "the guest clock is the host's again" run_in_guest "$vmx" 'echo GUEST-EPOCH=$(date +%s)'
g=$("$VELA" vm console --dump "$vmx" | grep -a -o 'GUEST-EPOCH=[0-9]*' | tail -n1 | cut -d= -f2)
d=$(( $(date +%s) - ${g:-0} )); d=${d#-}
if [ "$d" -le 5 ]; then pass "guest clock within ${d} s of the host"; else fail "guest clock off by $d s"; fi

# Quiesce: a real ext4 on the data disk.
check "mount ext4 in the guest" run_in_guest "$vmx" 'mkdir -p /mnt && mount -t ext4 /dev/sda /mnt && echo MOUNTED-$((40+2))'
check "mounted" console_has "$vmx" MOUNTED-42
out=$("$VELA" vm freeze "$vmx" 2>&1)
if echo "$out" | grep -q "frozen  /mnt"; then pass "freeze: /mnt frozen"; else fail "freeze: $out"; fi
check "pre-freeze script ran in the guest" wait_console "$vmx" "VELA-GUEST-PRE-FREEZE ran" 1 10
check "a write while frozen" run_in_guest "$vmx" '( (echo data > /mnt/during-freeze; sync; echo WRITE-AFTER-THAW-$((40+2))) & )'
sleep 2
if console_has "$vmx" WRITE-AFTER-THAW-42; then fail "a write went through a frozen file system"; else pass "writes wait while the file system is frozen"; fi
expect_error VELA_E_NOAGENT "freezing twice is refused" "$VELA" vm freeze "$vmx"
check "thaw" "$VELA" vm thaw "$vmx"
check "the waiting write completes after the thaw" wait_console "$vmx" WRITE-AFTER-THAW-42 1 20
check "post-thaw script ran in the guest" wait_console "$vmx" "VELA-GUEST-POST-THAW ran" 1 10
check "a failing pre-freeze script" run_in_guest "$vmx" 'touch /tmp/fail-pre-freeze'
expect_error VELA_E_NOAGENT "a failing pre-freeze script stops the freeze" "$VELA" vm freeze "$vmx"
check "nothing stays frozen" run_in_guest "$vmx" 'rm /tmp/fail-pre-freeze; echo ok > /mnt/after; sync; echo NOT-FROZEN-$((40+2))'
check "a write right after the refused freeze" console_has "$vmx" NOT-FROZEN-42

# Zero-fill: write and delete 16 MiB of random data, zero the free space,
# then compaction gets the space back.
check "random data written and deleted" run_in_guest "$vmx" 'dd if=/dev/urandom of=/mnt/junk bs=1M count=16 2>/dev/null; sync; rm /mnt/junk; sync; echo JUNK-GONE'
out=$("$VELA" vm zero-fill "$vmx" /mnt 2>&1)
if echo "$out" | grep -q "bytes of free space zeroed"; then pass "zero-fill: $out"; else fail "zero-fill: $out"; fi
expect_error VELA_E_NOAGENT "zero-fill of a missing folder is refused" "$VELA" vm zero-fill "$vmx" /does/not/exist
check "unmount" run_in_guest "$vmx" 'umount /mnt && echo UMOUNTED'

# Heartbeat: kill the agent, lost; restart it, recovered.
check "kill the agent in the guest" run_in_guest "$vmx" 'kill -9 $(pidof vela-guestd)'
check "heartbeat lost" wait_guest "$vmx" heartbeat lost 20
check "event: heartbeat lost" log_has "$vmx" "event: heartbeat lost"
check "restart the agent in the guest" run_in_guest "$vmx" '(vela-guestd daemon > /dev/console 2>&1 &)'
check "heartbeat recovered" wait_guest "$vmx" heartbeat ok 15
check "event: heartbeat recovered" log_has "$vmx" "event: heartbeat recovered"

# Hostile messages from the guest: garbage, an oversized line, a flood.
check "stop the agent (clean)" run_in_guest "$vmx" 'kill $(pidof vela-guestd); sleep 1'
check "a cleanly stopped agent is 'stopped', not lost" wait_guest "$vmx" agent stopped 10
# (No backslashes in what is typed: the console's --send reads escapes.)
port=/dev/vport0p1
check "hostile: malformed lines" run_in_guest "$vmx" "(echo 'not json'; echo '{\"cmd\":5}'; echo '[1,2]'; echo '{\"re\":-1,\"ok\":true}'; echo '{\"id\":1e300,\"cmd\":\"x\"}'; echo '{\"cmd\":\"BAD NAME\"}') > $port"
check "hostile: a 200 KB line" run_in_guest "$vmx" "(head -c 200000 /dev/zero | tr '[:cntrl:]' x; echo) > $port"
check "hostile: a flood of 5000 messages" run_in_guest "$vmx" "yes '{\"cmd\":\"beat\"}' | head -n 5000 > $port"
check "hostile: 300 requests at once" run_in_guest "$vmx" "yes '{\"id\":1,\"cmd\":\"guestinfo-set\",\"key\":\"k\",\"value\":\"v\"}' | head -n 300 > $port"
check "the supervisor still answers" "$VELA" vm status "$vmx"
check "bad messages are counted" sh -c "'$VELA' --json vm guest '$vmx' | jq -e '.bad_messages >= 4'"
check "the flood paused reading" log_has "$vmx" "reading paused"
check "flood pauses are counted" sh -c "'$VELA' --json vm guest '$vmx' | jq -e '.flood_pauses >= 1'"
check "restart the agent" run_in_guest "$vmx" '(vela-guestd daemon > /dev/console 2>&1 &)'
check "the agent works after the abuse" wait_guest "$vmx" agent running 20

# Soft reset and soft stop through the agent, with the guest's pre-commands.
check "soft reset" "$VELA" vm reset soft "$vmx"
check "pre-reboot command ran in the guest" console_has "$vmx" "VELA-GUEST-PRE-REBOOT ran"
check "soft reset went through the agent" log_has "$vmx" "soft restart requested through the guest agent"
check "the guest booted again" wait_console "$vmx" VELA-GUEST-READY 2 60
check "the VM is on after the soft reset" wait_state "$vmx" on 5
check "agent back after the reboot" wait_guest "$vmx" agent running 30
check "guestinfo set at run time survives a guest reboot" sh -c "[ \"\$('$VELA' vm guestinfo get '$vmx' build)\" = 7 ]"
out=$("$VELA" vm console --dump "$vmx")
# The heartbeat timeout here is 8 s: a guest slowed down for that long (TCG
# on a busy host) counts as lost, and a soft stop then rightly presses the
# ACPI button instead.  Stop while the heartbeat is fresh.
check "the heartbeat is ok before the soft stop" wait_guest "$vmx" heartbeat ok 30
check "soft stop" "$VELA" vm stop soft "$vmx"
check "the VM is off" wait_state "$vmx" off 10
before=$_failures
check "pre-halt command ran (logged by the agent)" log_has "$vmx" "the guest is shutting down (halt)"
check "soft stop went through the agent" log_has "$vmx" "soft shutdown requested through the guest agent"
# For a failure seen only in a CI log: what the supervisor saw.
[ "$_failures" = "$before" ] || grep -E "agent|heartbeat|soft|ACPI|question" "$(dirname "$vmx")/vela.log" | tail -20 | sed 's/^/  vela.log: /'

# Not persistent across power-off; the .vmx keys come back.
check "power on again" "$VELA" vm start "$vmx"
check "agent running again" wait_guest "$vmx" agent running 30
expect_error VELA_E_NOTFOUND "guestinfo set at run time is gone after a power cycle" "$VELA" vm guestinfo get "$vmx" build
check "guestinfo from the .vmx is back" sh -c "[ \"\$('$VELA' vm guestinfo get '$vmx' color)\" = blue ]"
check "stop hard" "$VELA" vm stop hard "$vmx"

# Compaction after the zero-fill gets the random data's space back.
before=$(stat -c %b "$dir/data.vmdk")
check "compact the data disk" "$VELA" disk compact "$dir/data.vmdk"
after=$(stat -c %b "$dir/data.vmdk")
if [ "$after" -lt $((before - 16384)) ]; then pass "compaction after zero-fill freed $(( (before - after) / 2048 )) MiB"; else fail "compaction freed too little: $before -> $after blocks"; fi
check "the compacted disk passes qemu-img check" qemu-img check -q "$dir/data.vmdk"

# machine.id blocked by the isolation key.
vmx2=$(make_vm blocked "$CMDLINE" 'machine.id = "secret"' 'isolation.tools.machine.id.get.disable = "TRUE"')
check "power on (isolated)" "$VELA" vm start "$vmx2"
check "agent running (isolated)" wait_guest "$vmx2" agent running 30
check "machine.id refused in the guest" run_in_guest "$vmx2" 'vela-guestd machine-id 2>&1 | sed "s/^/MID-REPLY: /"'
check "the refusal names the isolation key" console_has "$vmx2" "MID-REPLY: .*isolation.tools.machine.id.get.disable"
if console_has "$vmx2" "MID-REPLY: secret"; then fail "the isolated guest read machine.id"; else pass "the isolated guest did not read machine.id"; fi
check "stop hard (isolated)" "$VELA" vm stop hard "$vmx2"

# Through velad: the agent's view and guestinfo by the VM's name, and the
# heartbeat and guest OS in the VM list.
check "velad starts" velad_start
check "velad: register" "$VELA" vm register "$vmx"
check "velad: start" "$VELA" vm start agent
for ((i = 0; i < 60; i++)); do "$VELA" --json vm guest agent 2>/dev/null | jq -e '.heartbeat == "ok"' >/dev/null && break; sleep 0.5; done
check "velad: the guest agent by name" sh -c "'$VELA' --json vm guest agent | jq -e '.agent == \"running\" and (.info.kernel | length > 0)'"
check "velad: guestinfo set" "$VELA" vm guestinfo set agent owner ops-team
check "velad: guestinfo get" sh -c "[ \"\$('$VELA' vm guestinfo get agent owner)\" = ops-team ]"
check "velad: guestinfo list has the .vmx's key" sh -c "'$VELA' vm guestinfo list agent | grep -q 'guestinfo.color = blue'"
check "velad: guestinfo unset" "$VELA" vm guestinfo unset agent owner
expect_error VELA_E_NOTFOUND "velad: an unset key is gone" "$VELA" vm guestinfo get agent owner
check "velad: the guest reads what velad set" sh -c "'$VELA' vm guestinfo set agent via velad && true"
for ((i = 0; i < 30; i++)); do "$VELA" --json vm list | jq -e '.[] | select(.name == "agent") | .heartbeat == "ok" and .guest_os != null and .on_since != null' >/dev/null 2>&1 && break; sleep 0.5; done
check "velad: the VM list shows heartbeat, guest OS and since when it runs" sh -c "'$VELA' --json vm list | jq -e '.[] | select(.name == \"agent\") | .heartbeat == \"ok\" and .guest_os == \"Linux\" and .on_since > 0'"
check "velad: stop" "$VELA" vm stop agent hard
velad_stop

# A guest without the agent: soft stop falls back to the ACPI button.
vmx3=$(make_vm noagent 'boot.cmdline = "console=ttyS0 quiet panic=-1 vela.cmdloop=1 vela.noagent=1"')
check "power on (no agent)" "$VELA" vm start "$vmx3"
check "the guest boots (no agent)" wait_console "$vmx3" VELA-GUEST-READY
check "no agent: reported not running" wait_guest "$vmx3" agent "not running" 5
expect_error VELA_E_NOAGENT "no agent: freeze is refused" "$VELA" vm freeze "$vmx3"
check "no agent: soft stop by the ACPI button" "$VELA" vm stop soft "$vmx3"
check "no agent: the ACPI button was used" log_has "$vmx3" "ACPI power button pressed"
finish
