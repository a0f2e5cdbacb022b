#!/bin/bash
# A moved or copied VM asks "keep or create a new identity?" and honours the answer.
. "$(dirname "$0")/lib.sh"

vmx=$(make_vm orig "${SCSI_DISK[@]}" "$CMDLINE" 'ethernet0.present = "TRUE"')
check "first power-on" "$VELA" vm start "$vmx"
check "stop" "$VELA" vm stop hard "$vmx"
uuid=$(grep '^uuid.bios' "$vmx" | cut -d'"' -f2)
mac=$(grep '^ethernet0.generatedAddress' "$vmx" | cut -d'"' -f2)

# Copy the whole folder: the copy's uuid.location no longer matches its path.
cp -a "$VELA_HOME/vms/orig" "$VELA_HOME/vms/copy1"
copy=$VELA_HOME/vms/copy1/orig.vmx
before=$(md5sum < "$copy")
out=$("$VELA" vm start "$copy")
check "power-on of a copied VM stops at a question" grep -qx stuck <<< "$(head -n1 <<< "$out")"
check "the question asks about the identity" grep -q 'moved or was copied' <<< "$out"
check "getstate says stuck" test "$(state_of "$copy")" = stuck
check "status --json lists the choices" sh -c "'$VELA' --json vm status '$copy' | grep -q '\"keep\"'"
check "nothing was written to the .vmx while asking" test "$(md5sum < "$copy")" = "$before"
expect_error VELA_E_BADSTATE "pause while stuck is refused" "$VELA" vm pause "$copy"
expect_error VELA_E_INVAL "a bad answer is refused" "$VELA" vm answer "$copy" perhaps
check "still stuck after a bad answer" test "$(state_of "$copy")" = stuck
check "answer keep" "$VELA" vm answer "$copy" keep
check "the VM is on after the answer" test "$(state_of "$copy")" = on
check "keep: same uuid.bios" grep -qF "uuid.bios = \"$uuid\"" "$copy"
check "keep: same MAC" grep -qF "ethernet0.generatedAddress = \"$mac\"" "$copy"
check "keep: uuid.location now matches the new path (no question next time)" \
	sh -c "'$VELA' vm stop hard '$copy' && '$VELA' vm start '$copy' | grep -qx on"
check "stop" "$VELA" vm stop hard "$copy"

cp -a "$VELA_HOME/vms/orig" "$VELA_HOME/vms/copy2"
copy=$VELA_HOME/vms/copy2/orig.vmx
"$VELA" vm start "$copy" >/dev/null
check "answer create" "$VELA" vm answer "$copy" create
check "create: new uuid.bios" sh -c "! grep -qF 'uuid.bios = \"$uuid\"' '$copy'"
check "create: new MAC" sh -c "! grep -qF 'ethernet0.generatedAddress = \"$mac\"' '$copy'"
newuuid=$(grep '^uuid.bios' "$copy" | cut -d'"' -f2 | tr -d ' -')
check "create: the guest sees the new UUID" wait_console "$copy" "VELA-GUEST-UUID: ${newuuid:0:8}-" 1 60
check "stop" "$VELA" vm stop hard "$copy"

cp -a "$VELA_HOME/vms/orig" "$VELA_HOME/vms/copy3"
copy=$VELA_HOME/vms/copy3/orig.vmx
"$VELA" vm start "$copy" >/dev/null
out=$("$VELA" vm answer "$copy" cancel)
check "answer cancel powers the VM off" test "$out" = off
check "state is off after cancel" test "$(state_of "$copy")" = off
check "the power-on can be retried after cancel" sh -c "'$VELA' vm start '$copy' | head -n1 | grep -qx stuck"
check "stop hard cancels a pending question too" "$VELA" vm stop hard "$copy"
check "off" test "$(state_of "$copy")" = off

# uuid.action answers the question in advance.
cp -a "$VELA_HOME/vms/orig" "$VELA_HOME/vms/copy4"
copy=$VELA_HOME/vms/copy4/orig.vmx
echo 'uuid.action = "create"' >> "$copy"
check "uuid.action = create powers on without asking" sh -c "'$VELA' vm start '$copy' | grep -qx on"
check "uuid.action = create made a new identity" sh -c "! grep -qF 'uuid.bios = \"$uuid\"' '$copy'"
check "stop" "$VELA" vm stop hard "$copy"
finish
