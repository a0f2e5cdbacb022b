#!/bin/bash
# velad: the API over its UNIX socket against real guests: inventory, power,
# events, bad requests, who may connect, and restart safety (kill -9 velad
# while VMs run: they keep running, and a new velad finds them).
. "$(dirname "$0")/lib.sh"

VELAD=${VELAD:-$TOP/build/bin/velad}
SOCK=$VELA_HOME/run/velad.sock
TESTUSER=velatest$$
velad_pid=

# api METHOD PATH [BODY]: prints the body, then the HTTP status on the last line.
api() {
	local body=()
	[ $# -ge 3 ] && body=(-H 'Content-Type: application/json' --data-binary "$3")
	curl -s -m 120 -w '\n%{http_code}' --unix-socket "$SOCK" -X "$1" "${body[@]}" "http://velad$2"
}
# expect_api STATUS "what" METHOD PATH [BODY]: status matches; $reply holds the body.
expect_api() {
	local want=$1 what=$2 out
	shift 2
	out=$(api "$@")
	reply=$(echo "$out" | sed '$d')
	local got=$(echo "$out" | tail -n1)
	if [ "$got" = "$want" ]; then pass "$what"; else fail "$what (HTTP $got, want $want: $reply)"; fi
}
jq_reply() { echo "$reply" | jq -r "$1"; }

start_velad() {
	"$VELAD" --foreground >> "$VELA_HOME/velad.out" 2>&1 &
	velad_pid=$!
	for ((i = 0; i < 100; i++)); do
		[ -S "$SOCK" ] && curl -s --unix-socket "$SOCK" http://velad/api/v1/host >/dev/null && return 0
		sleep 0.1
	done
	return 1
}

stop_all() {
	[ -n "$velad_pid" ] && kill -9 "$velad_pid" 2>/dev/null
	userdel -r "$TESTUSER" >/dev/null 2>&1
	cleanup
}
trap stop_all EXIT

check "velad starts and answers on its socket" start_velad
expect_api 200 "host info" GET /api/v1/host
check "the default datastore exists" test -d "$VELA_HOME/datastores/datastore1"
check "host info lists the default datastore" test "$(jq_reply '.host.datastores[0].name')" = datastore1
expect_api 200 "datastores list with free space" GET /api/v1/datastores
check "datastore free space is a number" test "$(jq_reply '.datastores[0].free > 0')" = true

vmx1=$(make_vm api1 "${SCSI_DISK[@]}" "$CMDLINE_TICK")
vmx2=$(make_vm api2 "${SCSI_DISK[@]}" "$CMDLINE_TICK")
# A VM in the default datastore, registered by datastore path.
mkdir -p "$VELA_HOME/datastores/datastore1/ds3"
sed 's/displayName = "api1"/displayName = "in a datastore"/' "$vmx1" > "$VELA_HOME/datastores/datastore1/ds3/ds3.vmx"
cp --sparse=always "$(dirname "$vmx1")/disk.img" "$VELA_HOME/datastores/datastore1/ds3/"

# ---- inventory
expect_api 200 "register a VM" POST /api/v1/vms "{\"config\": \"$vmx1\", \"folder\": \"/prod\"}"
id1=$(jq_reply .vm.id)
check "a registered VM gets the .vmx displayName" test "$(jq_reply .vm.name)" = api1
check "a registered VM is off" test "$(jq_reply .vm.state)" = off
expect_api 200 "register a second VM under another name" POST /api/v1/vms "{\"config\": \"$vmx2\", \"name\": \"web server 2\"}"
id2=$(jq_reply .vm.id)
expect_api 200 "register by datastore path" POST /api/v1/vms '{"config": "[datastore1] ds3/ds3.vmx"}'
id3=$(jq_reply .vm.id)
check "the datastore path resolves to the file" test "$(jq_reply .vm.config)" = "$(realpath "$VELA_HOME/datastores/datastore1/ds3/ds3.vmx")"
expect_api 409 "registering the same file twice is refused" POST /api/v1/vms "{\"config\": \"$vmx1\"}"
check "... with VELA_E_EXISTS" test "$(jq_reply .error.name)" = VELA_E_EXISTS
expect_api 200 "list VMs" GET /api/v1/vms
check "the list has the three VMs in id order" test "$(jq_reply '[.vms[].id] | join(",")')" = "$id1,$id2,$id3"
check "the list shows names and folders" test "$(jq_reply '.vms[1].name + "|" + .vms[0].folder')" = "web server 2|/prod"

# ---- bad requests change nothing
n_before=$(api GET /api/v1/vms | sed '$d' | jq '.vms | length')
expect_api 400 "malformed JSON is a 400" POST /api/v1/vms '{"config": '
check "... with VELA_E_INVAL" test "$(jq_reply .error.name)" = VELA_E_INVAL
expect_api 400 "a wrong type is a 400" POST /api/v1/vms '{"config": 17}'
expect_api 400 "an unknown member is a 400" POST /api/v1/vms "{\"config\": \"$vmx1\", \"colour\": \"red\"}"
expect_api 400 "a missing member is a 400" POST /api/v1/vms '{}'
expect_api 400 "a JSON array body is a 400" POST /api/v1/vms '[1,2]'
expect_api 400 "a folder with .. is refused" POST /api/v1/vms "{\"config\": \"$vmx1\", \"folder\": \"/a/../b\"}"
check "... with VELA_E_BADNAME" test "$(jq_reply .error.name)" = VELA_E_BADNAME
expect_api 400 "a name with control characters is refused" POST /api/v1/vms "{\"config\": \"$vmx1\", \"name\": \"a\\u0001b\"}"
expect_api 400 "a name with a NUL is refused" POST /api/v1/vms "{\"config\": \"$vmx1\", \"name\": \"a\\u0000b\"}"
expect_api 404 "a missing .vmx is a 404" POST /api/v1/vms '{"config": "/nonexistent/x.vmx"}'
expect_api 404 "a datastore path escaping with .. is refused" POST /api/v1/vms '{"config": "[datastore1] ../../../etc/passwd"}'
expect_api 400 "a non-.vmx file is refused" POST /api/v1/vms '{"config": "/etc/passwd"}'
big=$(head -c 2000000 /dev/zero | tr '\0' 'a')
out=$(printf '{"config": "%s"}' "$big" | curl -s -w '\n%{http_code}' --unix-socket "$SOCK" -X POST --data-binary @- http://velad/api/v1/vms)
if [ "$(echo "$out" | tail -n1)" = 413 ]; then pass "an oversized body is a 413"; else fail "an oversized body is a 413 (got $(echo "$out" | tail -n1))"; fi
expect_api 404 "an unknown VM id is a 404" GET /api/v1/vms/999999
expect_api 404 "a non-numeric VM id is a 404" GET /api/v1/vms/abc
expect_api 404 "an unknown resource is a 404" GET /api/v1/nothing
expect_api 501 "a method a resource does not take is refused" PUT /api/v1/vms '{}'
expect_api 400 "an unknown power operation is a 400" POST /api/v1/vms/$id1/power '{"op": "explode"}'
expect_api 400 "an unknown power mode is a 400" POST /api/v1/vms/$id1/power '{"op": "stop", "mode": "gently"}'
expect_api 409 "stopping an off VM is a state refusal" POST /api/v1/vms/$id1/power '{"op": "stop", "mode": "hard"}'
check "... with VELA_E_BADSTATE" test "$(jq_reply .error.name)" = VELA_E_BADSTATE
expect_api 400 "a bad event query is a 400" GET "/api/v1/events?limit=abc"
expect_api 400 "an unknown severity is a 400" GET "/api/v1/events?severity=loud"
check "bad requests registered nothing" test "$(api GET /api/v1/vms | sed '$d' | jq '.vms | length')" = "$n_before"
check "velad is still alive after the bad requests" kill -0 "$velad_pid"

# ---- who may connect: root, velad's user, group vela
if useradd -M -s /usr/sbin/nologin "$TESTUSER" 2>/dev/null; then
	# Let the stranger reach the peer check itself.
	chmod 0711 "$VELA_HOME" "$VELA_HOME/run"
	chmod 0666 "$SOCK"
	out=$(setpriv --reuid "$TESTUSER" --regid "$TESTUSER" --clear-groups curl -s -w '\n%{http_code}' --unix-socket "$SOCK" http://velad/api/v1/vms)
	if [ "$(echo "$out" | tail -n1)" = 403 ] && echo "$out" | grep -q VELA_E_PERM; then
		pass "a user outside group vela gets 403"
	else
		fail "a user outside group vela gets 403 (got: $out)"
	fi
	chmod 0660 "$SOCK"
	chmod 0700 "$VELA_HOME"
else
	fail "useradd $TESTUSER"
fi

# ---- power through the API, checked from inside the guests
expect_api 200 "power on VM 1" POST /api/v1/vms/$id1/power '{"op": "start"}'
check "... the reply says on" test "$(jq_reply .status.state)" = on
expect_api 200 "power on VM 2" POST /api/v1/vms/$id2/power '{"op": "start"}'
check "guest 1 runs" wait_console "$vmx1" "VELA-GUEST-TICK 3" 1 60
check "guest 2 runs" wait_console "$vmx2" "VELA-GUEST-TICK 3" 1 60
expect_api 409 "starting a running VM is a state refusal" POST /api/v1/vms/$id1/power '{"op": "start"}'
expect_api 409 "unregistering a running VM is refused" DELETE /api/v1/vms/$id1
expect_api 200 "get one VM with its supervisor status" GET /api/v1/vms/$id1
check "... state on with QEMU's pid" test "$(jq_reply '.vm.state + ":" + (.vm.status.qemu_pid | tostring)')" != "on:null"
check "... and state on" test "$(jq_reply .vm.state)" = on
expect_api 200 "pause VM 2" POST /api/v1/vms/$id2/power '{"op": "pause"}'
check "... paused" test "$(jq_reply .status.state)" = paused
expect_api 200 "unpause VM 2" POST /api/v1/vms/$id2/power '{"op": "unpause"}'

# ---- kill -9 velad: the VMs keep running; a new velad finds them
kill -9 "$velad_pid"
wait "$velad_pid" 2>/dev/null
velad_pid=
t1=$(last_tick "$vmx1")
sleep 3
t2=$(last_tick "$vmx1")
if [ -n "$t1" ] && [ -n "$t2" ] && [ "$t2" -gt "$t1" ]; then pass "guest 1 keeps running without velad ($t1 -> $t2)"; else fail "guest 1 keeps running without velad ($t1 -> $t2)"; fi
check "VM 2 is still on without velad" test "$(state_of "$vmx2")" = on
check "velad restarts" start_velad
expect_api 200 "list after the restart" GET /api/v1/vms
check "both VMs are listed on after the restart" test "$(jq_reply '[.vms[] | select(.state == "on") | .id] | join(",")')" = "$id1,$id2"
check "the third VM is listed off" test "$(jq_reply ".vms[] | select(.id == $id3) | .state")" = off
expect_api 200 "events of VM 1" GET "/api/v1/events?vm=$id1"
check "the restart re-attached VM 1 (event)" test "$(jq_reply '[.events[] | select(.type == "vm.reattached")] | length')" -ge 1
check "power events name the user" test "$(jq_reply '[.events[] | select(.type == "vm.power")][0].user')" = root
check "events are only VM 1's" test "$(jq_reply '[.events[] | select(.vm != '"$id1"')] | length')" = 0

# ---- power off through the new velad
expect_api 200 "hard stop of VM 2 after the restart" POST /api/v1/vms/$id2/power '{"op": "stop", "mode": "hard"}'
check "... VM 2 is off" test "$(jq_reply .status.state)" = off
check "... and its supervisor is gone" wait_state "$vmx2" off 10
"$VELA" vm console --wait "power button pressed, shutting down cleanly" --timeout 60 "$vmx1" > "$VELA_HOME/waiter.out" 2>&1 &
waiter=$!
sleep 0.5
expect_api 200 "soft stop of VM 1" POST /api/v1/vms/$id1/power '{"op": "stop", "mode": "soft"}'
check "... VM 1 is off" test "$(jq_reply .status.state)" = off
wait "$waiter"
check "the guest shut down cleanly (its console said so)" test $? = 0

# A VM that goes off while velad is down is noticed at the next start.
expect_api 200 "power on VM 3" POST /api/v1/vms/$id3/power '{"op": "start"}'
kill -9 "$velad_pid"
wait "$velad_pid" 2>/dev/null
"$VELA" vm stop hard "$VELA_HOME/datastores/datastore1/ds3/ds3.vmx" >/dev/null 2>&1
check "velad restarts again" start_velad
expect_api 200 "events of VM 3" GET "/api/v1/events?vm=$id3&severity=warning"
check "VM 3 going off unattended is a warning event" test "$(jq_reply '[.events[] | select(.type == "vm.off.unattended")] | length')" = 1

expect_api 200 "unregister VM 3 (off)" DELETE /api/v1/vms/$id3
check "its files stay" test -f "$VELA_HOME/datastores/datastore1/ds3/ds3.vmx"
expect_api 404 "it is gone from the inventory" GET /api/v1/vms/$id3
expect_api 200 "audit events" GET "/api/v1/events?severity=audit&limit=1000"
check "the unregistration is an audit event" test "$(jq_reply '[.events[] | select(.type == "vm.unregistered")] | length')" = 1

# ---- SIGTERM stops velad cleanly, removing its socket
kill -TERM "$velad_pid"
wait "$velad_pid"
check "velad exits 0 on SIGTERM" test $? = 0
velad_pid=
check "its socket is gone" test ! -e "$SOCK"

finish
