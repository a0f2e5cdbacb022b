#!/bin/bash
# Run every Vela test and end with "N passed, N failed".
#   unit tests (cmocka) in the normal and the ASan+UBSan build, the clang build,
#   time-boxed libFuzzer runs of every parser, integration tests with real guests.
# FUZZ_SECONDS (default 30) bounds each fuzzer; ONLY=unit|fuzz|integ runs one part.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
passed=0
failed=0
logdir=$top/build/test-logs
mkdir -p "$logdir"

ok() { echo "PASS: $*"; passed=$((passed + 1)); }
ko() { echo "FAIL: $*"; failed=$((failed + 1)); }

# cmocka binaries: one result per test case.
run_cmocka() {   # label binary
	local label=$1 bin=$2 log out rc np nf
	log=$logdir/$label-$(basename "$bin").log
	CMOCKA_MESSAGE_OUTPUT=stdout timeout 300 "$bin" > "$log" 2>&1
	rc=$?
	np=$(grep -c '^\[       OK \]' "$log")
	nf=$(grep -cE '^\[  FAILED  \] [A-Za-z0-9_]+$' "$log")
	passed=$((passed + np))
	failed=$((failed + nf))
	grep -E '^\[  FAILED  \] [A-Za-z0-9_]+$' "$log" | sed "s/^\[  FAILED  \] /FAIL: $label $(basename "$bin") /"
	if [ $rc -ne 0 ] && [ "$nf" -eq 0 ]; then
		ko "$label $(basename "$bin") exited with $rc (see $log)"
	fi
	echo "$label $(basename "$bin"): $np passed, $nf failed"
}

part() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }

if part unit; then
	echo "== unit tests"
	for t in build/meson/tests/unit/test-*; do
		[ -f "$t" ] && [ -x "$t" ] && run_cmocka unit "$t"
	done
	echo "== unit tests under ASan+UBSan"
	for t in build/asan/tests/unit/test-*; do
		[ -f "$t" ] && [ -x "$t" ] && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 run_cmocka asan "$t"
	done
	echo "== multi-threaded libraries under ThreadSanitizer"
	for t in build/tsan/tests/unit/test-vdisk build/tsan/tests/unit/test-blk build/tsan/tests/unit/test-vhost build/tsan/tests/unit/test-host; do
		[ -f "$t" ] && [ -x "$t" ] && TSAN_OPTIONS=halt_on_error=1 run_cmocka tsan "$t"
	done
	echo "== clang build"
	if ninja -C build/clang > "$logdir/clang-build.log" 2>&1; then
		ok "clang -Wall -Wextra -Werror build"
	else
		ko "clang -Wall -Wextra -Werror build (see $logdir/clang-build.log)"
	fi
fi

if part fuzz; then
	echo "== fuzzing (${FUZZ_SECONDS:-30} s per target)"
	for f in build/fuzz/tests/fuzz/fuzz-*; do
		[ -f "$f" ] && [ -x "$f" ] || continue
		name=${f##*/fuzz-}
		corpus=$(mktemp -d)
		cp tests/fuzz/corpus/"$name"/* "$corpus"/ 2>/dev/null
		[ "$name" = nbd ] && tests/fuzz/nbd-seed.sh "$corpus/session.bin"
		[ "$name" = vhost ] && tests/fuzz/vhost-seed.sh "$corpus/start-and-read.bin"
		if [ "$name" = vdisk ]; then
			# Binary seeds are made by rules, not checked in.
			qemu-img create -q -f vmdk "$corpus/qemu.vmdk" 3M &&
				qemu-io -c 'write -P 0x41 0 64k' -c 'write -P 0x42 2M 512' "$corpus/qemu.vmdk" >/dev/null
			build/bin/vela disk create -s 1m "$corpus/vela.vmdk" >/dev/null
			tests/integ/cowd-image.sh "$corpus/cowd.vmdk"
			qemu-img create -q -f qcow2 "$corpus/qemu.qcow2" 2M &&
				qemu-io -c 'write -P 0x43 64k 64k' "$corpus/qemu.qcow2" >/dev/null
			qemu-img convert -c -O qcow2 "$corpus/qemu.qcow2" "$corpus/compressed.qcow2"
			qemu-img create -q -f vpc "$corpus/qemu.vhd" 2M &&
				qemu-io -f vpc -c 'write -P 0x44 0 4k' "$corpus/qemu.vhd" >/dev/null
			build/bin/vela disk create -s 1m -t vhd-fixed "$corpus/fixed.vhd" >/dev/null
			printf 'KDMV' > "$corpus/magic-only.vmdk"
		fi
		if (cd "$logdir" && timeout $(( ${FUZZ_SECONDS:-30} + 60 )) "$top/$f" -max_total_time="${FUZZ_SECONDS:-30}" \
			-rss_limit_mb=2048 "$corpus" > "$logdir/fuzz-$name.log" 2>&1); then
			ok "fuzz-$name: $(grep -o 'Done [0-9]* runs' "$logdir/fuzz-$name.log") without a finding"
		else
			ko "fuzz-$name found a problem (see $logdir/fuzz-$name.log and $logdir/crash-*)"
		fi
		rm -rf "$corpus"
	done
fi

if part integ; then
	echo "== integration tests (real QEMU guests)"
	for t in tests/integ/test-*.sh; do
		name=$(basename "$t" .sh)
		log=$logdir/$name.log
		timeout 900 bash "$t" > "$log" 2>&1
		rc=$?
		np=$(grep -c '^PASS: ' "$log")
		nf=$(grep -c '^FAIL: ' "$log")
		passed=$((passed + np))
		failed=$((failed + nf))
		grep '^FAIL: ' "$log" | sed "s/^FAIL: /FAIL: $name: /"
		if [ $rc -ne 0 ] && [ "$nf" -eq 0 ]; then
			ko "$name exited with $rc (see $log)"
		fi
		echo "$name: $np passed, $nf failed"
	done
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
