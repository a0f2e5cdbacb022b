#!/bin/bash
# Invalid configurations are refused precisely and change nothing; CLI surface.
. "$(dirname "$0")/lib.sh"

dir=$VELA_HOME/vms/bad
mkdir -p "$dir"
cat > "$dir/bad.vmx" <<'VMX'
displayName = "bad"
memsize = "100000000"
scsi0.present = "TRUE"
scsi0.virtualDev = "megaraid"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "missing-disk.vmdk"
ethernet12.present = "TRUE"
tools.syncTime = "sometimes"
VMX
before=$(md5sum < "$dir/bad.vmx")
out=$("$VELA" vmx check "$dir/bad.vmx" 2>&1)
check "vmx check fails on a bad file" sh -c "! '$VELA' vmx check '$dir/bad.vmx'"
for want in "bad.vmx:2: memsize: expected a whole number from 4 to 1048576" \
	    "bad.vmx:4: scsi0.virtualDev: expected lsilogic, lsisas1068, buslogic, pvscsi or virtio, got \"megaraid\"" \
	    "bad.vmx:6: scsi0:0.fileName: disk \"missing-disk.vmdk\" does not exist" \
	    "bad.vmx:7: ethernet12.present: device index out of range" \
	    "bad.vmx:8: tools.syncTime: expected a boolean"; do
	if echo "$out" | grep -qF "$want"; then pass "vmx check names: $want"; else fail "vmx check names: $want (got: $out)"; fi
done
n=$("$VELA" --json vmx check "$dir/bad.vmx" | grep -c '^    "[^"]*bad.vmx:[0-9]')
check "vmx check --json lists every problem ($n)" test "$n" = 5
expect_error VELA_E_CONFIG "power-on of an invalid config is refused" "$VELA" vm start "$dir/bad.vmx"
check "the refused VM is off" test "$(state_of "$dir/bad.vmx")" = off
check "the refused power-on wrote nothing to the .vmx" test "$(md5sum < "$dir/bad.vmx")" = "$before"
check "the refused power-on left no QEMU behind" test -z "$(pgrep -f 'guest=[b]ad,')"

printf 'memsize = "64\n' > "$dir/syntax.vmx"
expect_error VELA_E_SYNTAX "a missing quote is a syntax error with file and line" "$VELA" vm start "$dir/syntax.vmx"
check "the message names file and line" sh -c "'$VELA' vmx check '$dir/syntax.vmx' 2>&1 | grep -q 'syntax.vmx:1: key \"memsize\": missing closing'"

# A disk Vela's engine cannot open: the reason, naming the file, reaches the user.
vmx=$(make_vm qfail "$CMDLINE" 'scsi0.present = "TRUE"' 'scsi0:0.present = "TRUE"' 'scsi0:0.fileName = "disk.img"')
printf 'KDMVgarbage' | dd of="$(dirname "$vmx")/disk.img" conv=notrunc status=none
out=$("$VELA" vm start "$vmx" 2>&1)
if echo "$out" | grep -q "VELA_E_VERSION: scsi0:0: .*qfail/disk.img"; then pass "a disk the engine refuses is reported with its address and file"; else fail "a disk the engine refuses is reported with its address and file (got: $out)"; fi
check "off after the disk was refused" test "$(state_of "$vmx")" = off
check "no socket or lock is left behind" sh -c "! ls '$VELA_HOME'/run/vm/*/disk-*.sock 2>/dev/null | grep -q ."

# Something QEMU itself refuses (a kernel it cannot load): QEMU's reason reaches the user.
vmx=$(make_vm kfail)
printf 'garbage' > "$(dirname "$vmx")/bad-kernel"
sed -i "s|^boot.kernel = .*|boot.kernel = \"$(dirname "$vmx")/bad-kernel\"|" "$vmx"
out=$("$VELA" vm start "$vmx" 2>&1)
if echo "$out" | grep -q "VELA_E_ENGINE: QEMU failed to start: .*kernel"; then pass "QEMU's refusal is reported"; else fail "QEMU's refusal is reported (got: $out)"; fi
check "off after QEMU refused to start" test "$(state_of "$vmx")" = off

# CLI surface
n=$("$VELA" errors | grep -c '^VELA_E_')
check "vela errors lists at least 40 codes ($n)" test "$n" -ge 40
check "vela --json errors is JSON with names and errno" sh -c "'$VELA' --json errors | grep -q '\"errno\": \"ENOENT\"'"
check "an unknown command is a usage error (exit 2)" sh -c "'$VELA' frobnicate; test \$? = 2"
check "--json errors are JSON too" sh -c "'$VELA' --json vm pause /nonexistent.vmx | grep -q '\"name\": \"VELA_E_'"
# --help and the man page name the same commands.
help_cmds=$("$VELA" --help | sed -n 's/^  vela \([a-z]*\( [a-z-]\+\)\?\).*/\1/p' | sort -u)
man_cmds=$(sed -n 's/^\.B vela \([a-z]*\( [a-z-]\+\)\?\).*/\1/p' "$TOP/docs/man/vela.1" | sort -u)
if [ -n "$help_cmds" ] && [ "$help_cmds" = "$man_cmds" ]; then
	pass "--help and vela(1) name the same commands"
else
	fail "--help and vela(1) name the same commands: help=[$help_cmds] man=[$man_cmds]"
fi
help_opts=$("$VELA" --help | grep -o -- '--[a-z-]*' | sort -u)
man_opts=$(grep -o -- '\\-\\-[a-z-]*' "$TOP/docs/man/vela.1" | sed 's/\\//g' | sort -u)
if [ "$help_opts" = "$man_opts" ]; then pass "--help and vela(1) name the same options"; else fail "--help and vela(1) name the same options: help=[$help_opts] man=[$man_opts]"; fi
# Every key the model reads is documented in vela.vmx(5).
missing=""
for key in $(grep -ohE '"[a-zA-Z]+(\.[a-zA-Z.]+)+"' "$TOP/src/vmx/vmx_model.c" | tr -d '"' | grep -v '\.[ch]$' | sort -u); do
	grep -qiF "$key" "$TOP/docs/man/vela.vmx.5" || missing="$missing $key"
done
if [ -z "$missing" ]; then pass "vela.vmx(5) documents every key the model reads"; else fail "vela.vmx(5) lacks:$missing"; fi
finish
