#!/bin/bash
# velad autostart (order and delays at velad's start) and autostop (reverse
# order, per-VM action), with real supervisors.
. "$(dirname "$0")/lib.sh"

VELAD=${VELAD:-$TOP/build/asan/src/velad/velad}
[ -x "$VELAD" ] || VELAD=$TOP/build/bin/velad
SOCK=$VELA_HOME/run/velad.sock
velad_pid=
start_velad() {   # start_velad [EXTRA FLAG]
	"$VELAD" --foreground --https-port 0 --http-port 0 "$@" >> "$VELA_HOME/velad.out" 2>&1 &
	velad_pid=$!
	for ((i = 0; i < 100; i++)); do "$VELA" host info >/dev/null 2>&1 && return 0; sleep 0.1; done
	return 1
}
trap '[ -n "$velad_pid" ] && kill -9 $velad_pid 2>/dev/null; cleanup' EXIT

check "velad starts" start_velad
# Four small VMs (SeaBIOS, no disk).
for n in alpha beta gamma delta; do
	d=$VELA_HOME/vms/$n
	mkdir -p "$d"
	printf 'config.version = "8"\nvirtualHW.version = "4"\ndisplayName = "%s"\nmemsize = "64"\nguestOS = "other"\n' "$n" > "$d/$n.vmx"
	"$VELA" vm register "$d/$n.vmx" >/dev/null
done
# Order: beta (1, then 2 s), alpha (2, then 1 s), gamma (3, stop hard);
# delta stays off (autostart off, stop none).
check "autostart beta first, 2 s delay" "$VELA" vm autostart --order 1 --delay 2 beta
check "autostart alpha second, 1 s delay" "$VELA" vm autostart --order 2 --delay 1 alpha
check "autostart gamma third, stopped hard" "$VELA" vm autostart --order 3 --stop hard gamma
check "delta: no autostart" "$VELA" vm autostart --off --stop none delta
expect_error VELA_E_INVAL "a bad stop action is refused" "$VELA" vm autostart --stop gently alpha
expect_error VELA_E_RANGE "a delay above an hour is refused" "$VELA" vm autostart --delay 7200 alpha
check "the start order lists delta (0, off), beta, alpha, gamma" test "$("$VELA" --json host autostart | jq -r 'map(.name) | join(",")')" = "delta,beta,alpha,gamma"

# Restart velad: the autostart runs.
kill -TERM "$velad_pid"
wait "$velad_pid"
check "velad restarts" start_velad
early=$("$VELA" --json vm list | jq -r '.[] | select(.name == "gamma") | .state')
ok=
for ((i = 0; i < 300; i++)); do
	[ "$("$VELA" --json vm list | jq -r '[.[] | select(.state == "on") | .name] | sort | join(",")')" = "alpha,beta,gamma" ] && { ok=1; break; }
	sleep 0.1
done
check "alpha, beta and gamma came up; delta stayed off" test -n "$ok"
ev=$("$VELA" --json event list --severity audit --limit 1000 | jq -c '[.[] | select(.type == "vm.power" and .user == "autostart") | {vm, time}]')
order=$(echo "$ev" | jq -r 'map(.vm | tostring) | join(",")')
ids=$("$VELA" --json vm list | jq -r '[.[] | {(.name): .id}] | add | "\(.beta),\(.alpha),\(.gamma)"')
check "they started in the order beta, alpha, gamma ($order)" test "$order" = "$ids"
gap1=$(echo "$ev" | jq '.[1].time - .[0].time')
gap2=$(echo "$ev" | jq '.[2].time - .[1].time')
check "beta's 2 s delay was kept (${gap1} ms)" test "$gap1" -ge 2000
check "alpha's 1 s delay was kept (${gap2} ms)" test "$gap2" -ge 1000
check "the API answers while the autostart runs (gamma was still $early)" test "$early" = off

# A second velad start does not start them twice (they are on).
kill -9 "$velad_pid"
wait "$velad_pid" 2>/dev/null
check "velad restarts after kill -9" start_velad
sleep 1
n=$("$VELA" --json event list --severity audit --limit 1000 | jq '[.[] | select(.type == "vm.power" and .user == "autostart")] | length')
check "running VMs are not started again ($n starts in all)" test "$n" = 3

# Autostop: reverse order, each its action; delta (none) is left alone.
"$VELA" vm start delta >/dev/null
check "host autostop" "$VELA" host autostop
check "alpha, beta and gamma are off" test "$("$VELA" --json vm list | jq -r '[.[] | select(.state == "off") | .name] | sort | join(",")')" = "alpha,beta,gamma"
check "delta (stop none) is still on" test "$(state_of "$VELA_HOME/vms/delta/delta.vmx")" = on
stops=$("$VELA" --json event list --severity audit --limit 1000 | jq -r '[.[] | select(.type == "vm.power" and (.message | startswith("stop")))] | map("\(.vm):\(.message)") | join(",")')
ids=$("$VELA" --json vm list | jq -r '[.[] | {(.name): .id}] | add | "\(.gamma):stop hard,\(.alpha):stop trysoft,\(.beta):stop trysoft"')
check "stopped in reverse order with their actions ($stops)" test "$stops" = "$ids"

# Daemon shutdown: by default the VMs keep running; with --autostop-on-exit
# they stop as their settings say, in reverse order, before velad exits.
"$VELA" vm start alpha >/dev/null
"$VELA" vm start gamma >/dev/null
# Hard stops from here on: these SeaBIOS guests ignore the power button, so
# a soft stop waits out its full timeout.
"$VELA" vm autostart --order 2 --delay 1 --stop hard alpha >/dev/null
"$VELA" vm autostart --order 1 --delay 2 --stop hard beta >/dev/null
kill -TERM "$velad_pid"
wait "$velad_pid"
check "velad exits 0" test $? = 0
check "a plain stop of velad leaves the VMs running" test "$(state_of "$VELA_HOME/vms/alpha/alpha.vmx"),$(state_of "$VELA_HOME/vms/gamma/gamma.vmx")" = on,on
check "velad starts with --autostop-on-exit" start_velad --autostop-on-exit
# Its autostart brings beta up again; the stop comes during beta's delay
# (the autostart is cancelled, so alpha is not started behind its back).
check "the autostart started beta" wait_state "$VELA_HOME/vms/beta/beta.vmx" on 30
kill -TERM "$velad_pid"
wait "$velad_pid"
check "velad exits 0 after its autostop" test $? = 0
velad_pid=
check "alpha, beta and gamma were stopped at velad's exit" test "$(state_of "$VELA_HOME/vms/alpha/alpha.vmx"),$(state_of "$VELA_HOME/vms/beta/beta.vmx"),$(state_of "$VELA_HOME/vms/gamma/gamma.vmx")" = off,off,off
check "delta (stop none) still runs" test "$(state_of "$VELA_HOME/vms/delta/delta.vmx")" = on
stops=$(sqlite3 "$VELA_HOME/host.db" "select vm || ':' || message from events where type = 'vm.power' and user = 'autostop' order by id" | paste -sd, -)
ids=$(sqlite3 "$VELA_HOME/host.db" "select (select id from vms where name = 'gamma') || ':stop hard,' || (select id from vms where name = 'alpha') || ':stop hard,' || (select id from vms where name = 'beta') || ':stop hard'")
check "... in reverse order: gamma, alpha, beta ($stops)" test "$stops" = "$ids"
"$VELA" vm stop hard "$VELA_HOME/vms/delta/delta.vmx" >/dev/null
check_sanitizers "$VELA_HOME/velad.out" velad-autostart
finish
