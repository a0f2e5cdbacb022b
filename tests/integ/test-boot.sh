#!/bin/bash
# Boot the test guest from a .vmx under vela-vmx and check it from inside.
. "$(dirname "$0")/lib.sh"

vmx=$(make_vm boot1 "${SCSI_DISK[@]}" "$CMDLINE" 'ethernet0.present = "TRUE"' 'someVendor.unknown = "kept"')
before=$(cat "$vmx")

check "vmx check accepts the VM" "$VELA" vmx check "$vmx"
check "getstate of a VM never started is off" test "$(state_of "$vmx")" = off
start_ms=$(date +%s%3N)
check "vm start succeeds" "$VELA" vm start "$vmx"
check "state is on after start" test "$(state_of "$vmx")" = on
if wait_console "$vmx" VELA-GUEST-READY 1 60; then
	pass "guest reached userspace (marker on the serial console) in $(( $(date +%s%3N) - start_ms )) ms"
else
	fail "guest reached userspace"
fi
console=$("$VELA" vm console --dump "$vmx")
if echo "$console" | grep -q "VELA-GUEST-DISK: sda .*first64=VELA-DISK-boot1"; then
	pass "guest reads the disk's first sector (VELA-DISK-boot1)"
else
	fail "guest reads the disk's first sector: $(echo "$console" | grep VELA-GUEST-DISK)"
fi
if echo "$console" | grep -q "VELA-GUEST-DISK: sda sectors=131072"; then
	pass "guest sees the disk size (64 MiB)"
else
	fail "guest sees the disk size"
fi

# First power-on writes back generated identity, changing nothing else.
after=$(cat "$vmx")
check "uuid.bios written back" grep -q '^uuid.bios = "[0-9a-f ]*-[0-9a-f ]*"$' "$vmx"
check "uuid.location written back" grep -q '^uuid.location = ' "$vmx"
check "generated MAC written back" grep -q '^ethernet0.generatedAddress = "02:56:4c:' "$vmx"
if [ "${after:0:${#before}}" = "$before" ]; then
	pass "write-back keeps every existing line byte for byte"
else
	fail "write-back keeps every existing line byte for byte"
fi
mac=$(grep generatedAddress "$vmx" | cut -d'"' -f2)
uuid=$(grep '^uuid.bios' "$vmx" | cut -d'"' -f2)

json=$("$VELA" --json vm status "$vmx")
check "status --json reports the accelerator" sh -c "echo '$json' | grep -q '\"accel\": \"tcg\"'"
check "status --json reports the QEMU pid" sh -c "echo '$json' | grep -q '\"qemu_pid\": [0-9]'"
qemu_pid=$(echo "$json" | sed -n 's/.*"qemu_pid": \([0-9]*\).*/\1/p')
sup_pid=$(echo "$json" | sed -n 's/.*"supervisor_pid": \([0-9]*\).*/\1/p')
hex=$(echo "$uuid" | tr -d ' -')
canon="${hex:0:8}-${hex:8:4}-${hex:12:4}-${hex:16:4}-${hex:20:12}"
check "QEMU runs under TCG" sh -c "tr '\0' ' ' < /proc/$qemu_pid/cmdline | grep -q -- '-accel tcg'"
check "QEMU got the VM's uuid.bios as its SMBIOS UUID" sh -c "tr '\0' ' ' < /proc/$qemu_pid/cmdline | grep -q -- '-uuid $canon'"
check "the guest sees the MAC from the .vmx" grep -q "VELA-GUEST-NIC: eth0 $mac" <("$VELA" vm console --dump "$vmx")
check "the guest sees uuid.bios as its SMBIOS UUID" grep -q "VELA-GUEST-UUID: $canon" <("$VELA" vm console --dump "$vmx")
check "VM log records the power-on" grep -q "event: VM powered on" "$(dirname "$vmx")/vela.log"

# Editing the file of a running VM: detected, reported as pending, not applied.
sed -i 's/^memsize = "256"/memsize = "512"/' "$vmx"
echo 'annotation = "edited while running"' >> "$vmx"
sleep 0.3
st=$("$VELA" --json vm status "$vmx")
check "an edit of the running VM's memsize is pending" grep -q '"key": "memsize"' <<< "$st"
check "the pending change shows both values" grep -A2 '"key": "memsize"' <<< "$st" | grep -q '"running": "256"'
check "an added key is pending too" grep -q '"key": "annotation"' <<< "$st"
check "the VM keeps running on its power-on configuration" test "$(state_of "$vmx")" = on
check "the edit is an event in the VM log" grep -q "edited while the VM runs; 2 changes pending until the next power cycle: memsize, annotation" "$(dirname "$vmx")/vela.log"
cp "$vmx" "$vmx.good"
echo 'broken = "no end quote' >> "$vmx"
sleep 0.3
check "a broken edit is reported by status" grep -q '"config_error": ".*missing closing' <<< "$("$VELA" --json vm status "$vmx")"
check "a broken edit is an event in the VM log" grep -q "now invalid" "$(dirname "$vmx")/vela.log"
mv "$vmx.good" "$vmx"

check "stop hard" "$VELA" vm stop hard "$vmx"
check "state is off after stop hard" test "$(state_of "$vmx")" = off
check "QEMU is gone after stop" sh -c "! kill -0 $qemu_pid 2>/dev/null"
check "the supervisor exited" sh -c "for i in \$(seq 50); do kill -0 $sup_pid 2>/dev/null || exit 0; sleep 0.1; done; exit 1"

# Second power-on: identity stays the same, the log rotates.
check "second start" "$VELA" vm start "$vmx"
check "after a power cycle nothing is pending" sh -c "! '$VELA' --json vm status '$vmx' | grep -q pending_changes"
check "uuid.bios unchanged on the second power-on" grep -qF "uuid.bios = \"$uuid\"" "$vmx"
check "the edited memsize applies after the power cycle" pgrep -f "guest=boot1,.* -m 512 "
check "MAC unchanged on the second power-on" grep -qF "ethernet0.generatedAddress = \"$mac\"" "$vmx"
check "previous log rotated to vela-1.log" grep -q "VM powered off" "$(dirname "$vmx")/vela-1.log"
check "guest boots again" wait_console "$vmx" VELA-GUEST-READY 1 60
check "stop hard again" "$VELA" vm stop hard "$vmx"
finish
