# lib.sh - helpers for Vela's integration tests (sourced by each test-*.sh).
# Every check prints "PASS: what" or "FAIL: what"; tests/run-all.sh counts them.
set -u
TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VELA=${VELA:-$TOP/build/bin/vela}
GUEST=${GUEST:-$TOP/build/guest}
export VELA_HOME=$(mktemp -d /tmp/vela-integ.XXXXXX)
_failures=0

cleanup() {
	# Power off whatever this test left running, then remove its home.
	for pidf in "$VELA_HOME"/run/vm/*/pid; do
		[ -f "$pidf" ] || continue
		kill -TERM "$(cat "$pidf")" 2>/dev/null
	done
	sleep 0.5
	for pidf in "$VELA_HOME"/run/vm/*/pid; do
		[ -f "$pidf" ] && kill -KILL "$(cat "$pidf")" 2>/dev/null
	done
	rm -rf "$VELA_HOME"
}
trap cleanup EXIT

pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; _failures=$((_failures + 1)); }
check() {   # check "what" command...
	local what=$1
	shift
	if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}

# expect_error CODE_NAME "what" command... : command fails with that error code
expect_error() {
	local code=$1 what=$2 out
	shift 2
	if out=$("$@" 2>&1); then
		fail "$what (succeeded: $out)"
	elif echo "$out" | grep -q "$code"; then
		pass "$what"
	else
		fail "$what (expected $code, got: $out)"
	fi
}

# make_vm NAME [extra .vmx lines...]: a VM folder with a 64 MiB disk whose
# first bytes are "VELA-DISK-<NAME>", booting the test guest.
make_vm() {
	local name=$1
	shift
	local dir=$VELA_HOME/vms/$name
	mkdir -p "$dir"
	truncate -s 64M "$dir/disk.img"
	printf 'VELA-DISK-%s' "$name" | dd of="$dir/disk.img" conv=notrunc status=none
	{
		echo '#!/usr/bin/vmware'
		echo 'config.version = "8"'
		echo 'virtualHW.version = "4"'
		echo "displayName = \"$name\""
		echo 'memsize = "256"'
		echo "boot.kernel = \"$GUEST/vmlinuz\""
		echo "boot.initrd = \"$GUEST/initrd.img\""
		echo 'serial0.present = "TRUE"'
		echo 'serial0.fileType = "console"'
		for line in "$@"; do echo "$line"; done
	} > "$dir/$name.vmx"
	echo "$dir/$name.vmx"
}

# Standard disk on a virtio-scsi controller.
SCSI_DISK=('scsi0.present = "TRUE"' 'scsi0.virtualDev = "virtio"' 'scsi0:0.present = "TRUE"' 'scsi0:0.fileName = "disk.img"')
CMDLINE='boot.cmdline = "console=ttyS0 quiet panic=-1 vela.cmdloop=1"'
CMDLINE_TICK='boot.cmdline = "console=ttyS0 quiet panic=-1 vela.cmdloop=1 vela.tick=1"'

state_of() { "$VELA" vm getstate "$1" 2>/dev/null; }

# wait_state VMX STATE [SECONDS]
wait_state() {
	local i
	for ((i = 0; i < ${3:-30} * 10; i++)); do
		[ "$(state_of "$1")" = "$2" ] && return 0
		sleep 0.1
	done
	return 1
}

# wait_console VMX TEXT [COUNT] [SECONDS]
wait_console() {
	"$VELA" vm console --wait "$2" --count "${3:-1}" --timeout "${4:-60}" "$1" >/dev/null 2>&1
}

# Last VELA-GUEST-TICK number on the console.
last_tick() {
	"$VELA" vm console --dump "$1" | grep -a -o 'VELA-GUEST-TICK [0-9]*' | tail -n1 | awk '{print $2}'
}

console_has() { "$VELA" vm console --dump "$1" | grep -a -q "$2"; }

# run_in_guest VMX COMMAND: type a command on the guest's shell and wait for it
# to finish.  Input typed before the shell reads the console is lost, so the
# first command waits for the shell's prompt.
n_cmd=0
run_in_guest() {
	n_cmd=$((n_cmd + 1))
	wait_console "$1" "vela-guest# " 1 30 &&
		"$VELA" vm console --send "$2; echo CMD-DONE-$n_cmd-\$((6*7))\n" "$1" &&
		wait_console "$1" "CMD-DONE-$n_cmd-42" 1 30
}

# guest_writer_start VMX N FIRST: in the background, the guest writes block
# FIRST+i-1 = "BLK<i>" (i = 1..N, 512 bytes, fsync'd each) on /dev/vda and then
# prints WRITER-42-DONE.
guest_writer_start() {
	run_in_guest "$1" "( (i=1; while [ \$i -le $2 ]; do printf BLK%05d \$i | dd of=/dev/vda bs=512 seek=\$((i+$3-1)) conv=notrunc,fsync 2>/dev/null; i=\$((i+1)); done; echo WRITER-\$((40+2))-DONE) & )"
}

# guest_verify VMX N FIRST: the guest drops its caches and reads the blocks
# back; sets verify_result to "VERIFY-42-BAD=<count>" (empty when it never
# ends).  Not in $(...): run_in_guest's command counter must advance here.
guest_verify() {
	verify_result=
	run_in_guest "$1" "( (echo 3 > /proc/sys/vm/drop_caches; bad=0; i=1; while [ \$i -le $2 ]; do [ \"\$(dd if=/dev/vda bs=512 skip=\$((i+$3-1)) count=1 2>/dev/null | head -c 8)\" = \"\$(printf BLK%05d \$i)\" ] || bad=\$((bad+1)); i=\$((i+1)); done; echo VERIFY-\$((40+2))-BAD=\$bad) & )" &&
		wait_console "$1" "VERIFY-42-BAD=" 1 300
	verify_result=$("$VELA" vm console --dump "$1" | grep -a -o 'VERIFY-42-BAD=[0-9]*' | tail -n1)
}

# velad_start: a velad of this test's home (local socket only, no TCP),
# killed at exit; the CLI finds it on its own.
velad_pid=
velad_start() {
	"$TOP/build/bin/velad" --foreground --https-port 0 --http-port 0 >> "$VELA_HOME/velad.out" 2>&1 &
	velad_pid=$!
	trap 'kill -9 $velad_pid 2>/dev/null; cleanup' EXIT
	local i
	for ((i = 0; i < 100; i++)); do "$VELA" host info >/dev/null 2>&1 && return 0; sleep 0.1; done
	return 1
}
velad_stop() { kill "$velad_pid"; wait "$velad_pid" 2>/dev/null; velad_pid=; }

# free_port: a TCP port nobody listens on (several test runs may share a machine).
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}

# check_sanitizers LOG NAME: the log of a sanitizer build (velad) has no
# ASan, LeakSanitizer or UBSan finding; one that has is kept as
# build/test-logs/NAME.log.
check_sanitizers() {
	if grep -q -E "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$1"; then
		mkdir -p "$TOP/build/test-logs"
		cp "$1" "$TOP/build/test-logs/$2.log"
		fail "sanitizer findings in $2 (build/test-logs/$2.log): $(grep -m3 -E 'ERROR:|runtime error:|#[0-9] .* in ' "$1" | tr '\n' ' ')"
	else
		pass "no ASan, LeakSanitizer or UBSan finding in $2"
	fi
}

finish() {
	[ "$_failures" -eq 0 ]
}
