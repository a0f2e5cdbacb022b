#!/bin/bash
# velad under load: 50 parallel clients list, get, reconfigure and power-cycle 20 VMs for a
# bounded time against an ASan+UBSan build of velad.  Every answer must be a
# success or a correct state-machine refusal (409), velad must not leak or
# crash, and at the end velad's view of every VM matches its supervisor's.
. "$(dirname "$0")/lib.sh"

VELAD=${VELAD_ASAN:-$TOP/build/asan/src/velad/velad}
SOCK=$VELA_HOME/run/velad.sock
CLIENTS=${CLIENTS:-50} NVMS=${NVMS:-20} SECONDS_LOAD=${SECONDS_LOAD:-25}
if [ ! -x "$VELAD" ]; then
	fail "the ASan build of velad is missing ($VELAD; make asan)"
	finish
	exit 1
fi

"$VELAD" --foreground --https-port 0 --http-port 0 > "$VELA_HOME/velad.out" 2>&1 &
velad_pid=$!
trap 'kill -9 $velad_pid 2>/dev/null; cleanup' EXIT
for ((i = 0; i < 100; i++)); do curl -s --unix-socket "$SOCK" http://velad/api/v1/host >/dev/null && break; sleep 0.1; done

# Small VMs that power on quickly: SeaBIOS, no disk, 64 MiB.
for ((i = 1; i <= NVMS; i++)); do
	d=$VELA_HOME/vms/load$i
	mkdir -p "$d"
	printf 'config.version = "8"\nvirtualHW.version = "4"\ndisplayName = "load%d"\nmemsize = "64"\nguestOS = "other"\n' "$i" > "$d/load$i.vmx"
	curl -s --unix-socket "$SOCK" -X POST --data-binary "{\"config\": \"$d/load$i.vmx\"}" http://velad/api/v1/vms >/dev/null
done
n=$(curl -s --unix-socket "$SOCK" http://velad/api/v1/vms | jq '.vms | length')
check "$NVMS VMs registered" test "$n" = "$NVMS"

# One client: random requests until the deadline; logs "STATUS ERRNAME" lines.
client() {
	local end=$(( $(date +%s) + SECONDS_LOAD )) id op out
	RANDOM=$1
	while [ "$(date +%s)" -lt "$end" ]; do
		id=$((1 + RANDOM % NVMS))
		case $((RANDOM % 10)) in
		0 | 1) out=$(curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" http://velad/api/v1/vms) ;;
		2) out=$(curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" http://velad/api/v1/vms/$id) ;;
		3) out=$(curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" "http://velad/api/v1/events?vm=$id&limit=20") ;;
		4) out=$(curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" -X PATCH \
			--data-binary "{\"memsize\": $((64 + 32 * (RANDOM % 3))), \"annotation\": \"client $1\"}" http://velad/api/v1/vms/$id) ;;
		5) out=$(curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" "http://velad/api/v1/tasks?vm=$id&limit=5") ;;
		*) op=$(echo start stop pause unpause | tr ' ' '\n' | sed -n "$((1 + RANDOM % 4))p")
		   out=$(curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" -X POST \
			--data-binary "{\"op\": \"$op\", \"mode\": \"hard\"}" http://velad/api/v1/vms/$id/power) ;;
		esac
		echo "$(echo "$out" | tail -n1) $(echo "$out" | sed '$d' | jq -r '.error.name // "ok"' 2>/dev/null)"
	done
}
for ((c = 1; c <= CLIENTS; c++)); do client $c > "$VELA_HOME/client$c.log" 2>&1 & done
wait $(jobs -p | grep -v "^$velad_pid$") 2>/dev/null
total=$(cat "$VELA_HOME"/client*.log | wc -l)
bad=$(cat "$VELA_HOME"/client*.log | grep -v -E '^200 ok$|^409 VELA_E_(BADSTATE|NOTRUNNING|BUSY)$' | sort | uniq -c)
check "the clients made requests ($total)" test "$total" -gt 500
if [ -z "$bad" ]; then pass "every answer was a success or a state refusal"; else fail "unexpected answers: $bad"; fi
check "velad survived the load" kill -0 "$velad_pid"

# Consistent final state: velad's view equals each supervisor's (after one refresh).
sleep 2.5
mismatch=
for ((i = 1; i <= NVMS; i++)); do
	mine=$(curl -s --unix-socket "$SOCK" http://velad/api/v1/vms | jq -r ".vms[] | select(.name == \"load$i\") | .state")
	real=$(state_of "$VELA_HOME/vms/load$i/load$i.vmx")
	[ "$mine" = "$real" ] || mismatch="$mismatch load$i:$mine/$real"
done
if [ -z "$mismatch" ]; then pass "velad's states match the supervisors'"; else fail "velad's states match the supervisors' ($mismatch)"; fi
# Concurrent edits (through velad, or through the supervisor while a VM ran)
# left every .vmx whole, and velad reports what the file says.
broken=
for ((i = 1; i <= NVMS; i++)); do
	f=$VELA_HOME/vms/load$i/load$i.vmx
	"$VELA" vmx check "$f" >/dev/null 2>&1 || broken="$broken load$i(invalid)"
	said=$(curl -s --unix-socket "$SOCK" http://velad/api/v1/vms/$i | jq -r .vm.settings.memsize)
	grep -qx "memsize = \"$said\"" "$f" || broken="$broken load$i(memsize $said)"
done
if [ -z "$broken" ]; then pass "every .vmx is valid and matches velad's settings"; else fail "every .vmx is valid and matches velad's settings:$broken"; fi
n_reconf=$(curl -s --unix-socket "$SOCK" "http://velad/api/v1/events?limit=10000&severity=audit" | jq "[.events[] | select(.type == \"vm.reconfigured\")] | length")
check "reconfigurations were made ($n_reconf)" test "$n_reconf" -gt 20

# Power everything off through velad, then stop velad: ASan reports leaks at exit.
for ((i = 1; i <= NVMS; i++)); do
	curl -s -m 120 --unix-socket "$SOCK" -X POST --data-binary '{"op": "stop", "mode": "hard"}' http://velad/api/v1/vms/$i/power >/dev/null
done
check "every VM is off" test "$(curl -s --unix-socket "$SOCK" http://velad/api/v1/vms | jq '[.vms[] | select(.state != "off")] | length')" = 0
kill -TERM "$velad_pid"
wait "$velad_pid"
rc=$?
check "velad exits cleanly after the load (exit $rc)" test "$rc" = 0
check_sanitizers "$VELA_HOME/velad.out" velad-load
finish
