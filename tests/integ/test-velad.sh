#!/bin/bash
# velad: the API over its UNIX socket against real guests: inventory, power,
# events, bad requests, who may connect, and restart safety (kill -9 velad
# while VMs run: they keep running, and a new velad finds them).
. "$(dirname "$0")/lib.sh"

# The ASan+UBSan build when there is one: the same behaviour, and its
# findings (leaks at the final clean exit) fail the test.
VELAD=${VELAD:-$TOP/build/asan/src/velad/velad}
[ -x "$VELAD" ] || VELAD=$TOP/build/bin/velad
SOCK=$VELA_HOME/run/velad.sock
TESTUSER=velatest$$
# Users of the permission matrix: one per role, plus one with no grant.
RO=velaro$$ OP=velaop$$ AD=velaad$$ NOBODY=velano$$ GRP=velagrp$$
PASSWORD=Secret-$$-pw
velad_pid=
# Free ports for this run (several test runs may share the machine).
HTTPS_PORT=$(free_port)
HTTP_PORT=$(free_port)
URL=https://127.0.0.1:$HTTPS_PORT

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
# wait_event TYPE SEVERITY: up to 10 s for one event of the type.
wait_event() {
	for ((i = 0; i < 50; i++)); do
		[ "$(api GET "/api/v1/events?severity=$2&limit=1000" | sed '$d' | jq "[.events[] | select(.type == \"$1\")] | length")" = 1 ] && return 0
		sleep 0.2
	done
	return 1
}

start_velad() {
	"$VELAD" --foreground --https-port "$HTTPS_PORT" --http-port "$HTTP_PORT" --listen 127.0.0.1 >> "$VELA_HOME/velad.out" 2>&1 &
	velad_pid=$!
	for ((i = 0; i < 100; i++)); do
		[ -S "$SOCK" ] && curl -s --unix-socket "$SOCK" http://velad/api/v1/host >/dev/null && return 0
		sleep 0.1
	done
	return 1
}

stop_all() {
	[ -n "$velad_pid" ] && kill -9 "$velad_pid" 2>/dev/null
	mountpoint -q "$VELA_HOME/small-mnt" 2>/dev/null && umount "$VELA_HOME/small-mnt"
	for u in "$TESTUSER" "$RO" "$OP" "$AD" "$NOBODY"; do userdel "$u" >/dev/null 2>&1; done
	groupdel "$GRP" >/dev/null 2>&1
	cleanup
}
trap stop_all EXIT

check "velad starts and answers on its socket" start_velad
expect_api 200 "host info" GET /api/v1/host
check "the default datastore exists" test -d "$VELA_HOME/datastores/local"
check "host info lists the default datastore" test "$(jq_reply '.host.datastores[0].name')" = local
expect_api 200 "datastores list with free space" GET /api/v1/datastores
check "datastore free space is a number" test "$(jq_reply '.datastores[0].free > 0')" = true

vmx1=$(make_vm api1 "${SCSI_DISK[@]}" "$CMDLINE_TICK")
vmx2=$(make_vm api2 "${SCSI_DISK[@]}" "$CMDLINE_TICK")
# A VM in the default datastore, registered by datastore path.
mkdir -p "$VELA_HOME/datastores/local/ds3"
sed 's/displayName = "api1"/displayName = "in a datastore"/' "$vmx1" > "$VELA_HOME/datastores/local/ds3/ds3.vmx"
cp --sparse=always "$(dirname "$vmx1")/disk.img" "$VELA_HOME/datastores/local/ds3/"

# ---- inventory
expect_api 200 "register a VM" POST /api/v1/vms "{\"config\": \"$vmx1\", \"folder\": \"/prod\"}"
id1=$(jq_reply .vm.id)
check "a registered VM gets the .vmx displayName" test "$(jq_reply .vm.name)" = api1
check "a registered VM is off" test "$(jq_reply .vm.state)" = off
expect_api 200 "register a second VM under another name" POST /api/v1/vms "{\"config\": \"$vmx2\", \"name\": \"web server 2\"}"
id2=$(jq_reply .vm.id)
expect_api 200 "register by datastore path" POST /api/v1/vms '{"config": "[local] ds3/ds3.vmx"}'
id3=$(jq_reply .vm.id)
check "the datastore path resolves to the file" test "$(jq_reply .vm.config)" = "$(realpath "$VELA_HOME/datastores/local/ds3/ds3.vmx")"
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
expect_api 404 "a datastore path escaping with .. is refused" POST /api/v1/vms '{"config": "[local] ../../../etc/passwd"}'
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

# ---- creating VMs from a spec: folder, .vmx and disks; a failure leaves nothing
expect_api 200 "create a VM from a spec" POST /api/v1/vms/create '{"name": "new web", "folder": "/prod", "memsize": 128, "vcpus": 2, "disks": [{"size": "64m"}, {"size": 1048576, "type": "qcow2", "bus": "virtio"}]}'
idc=$(jq_reply .vm.id)
newdir="$VELA_HOME/datastores/local/new web"
check "its .vmx passes vela vmx check" "$VELA" vmx check "$newdir/new web.vmx"
check "its first disk is a 64 MiB sparse VMDK qemu-img reads" sh -c "qemu-img info --output=json '$newdir/new web.vmdk' | jq -e '.\"virtual-size\" == 67108864 and .format == \"vmdk\"'"
check "its second disk is qcow2" sh -c "qemu-img info --output=json '$newdir/new web_1.qcow2' | jq -e '.format == \"qcow2\"'"
check "it is registered in /prod" test "$(jq_reply .vm.folder)" = /prod
expect_api 409 "creating the same name again is refused" POST /api/v1/vms/create '{"name": "new web"}'
expect_api 400 "a bad disk in a spec is refused" POST /api/v1/vms/create '{"name": "half", "disks": [{"size": "64m"}, {"size": "lots"}]}'
check "... and leaves no folder behind" test ! -e "$VELA_HOME/datastores/local/half"
expect_api 400 "a name with a slash is refused" POST /api/v1/vms/create '{"name": "../escape"}'
expect_api 400 "an unknown disk type is refused" POST /api/v1/vms/create '{"name": "t1", "disks": [{"size": "64m", "type": "floppy"}]}'
check "... and leaves no folder behind" test ! -e "$VELA_HOME/datastores/local/t1"
expect_api 400 "memsize out of range is refused" POST /api/v1/vms/create '{"name": "t2", "memsize": 1}'
expect_api 400 "disks must be a list" POST /api/v1/vms/create '{"name": "t3", "disks": {"size": 1}}'
expect_api 200 "power on the created VM" POST /api/v1/vms/$idc/power '{"op": "start"}'
check "... it runs" test "$(jq_reply .status.state)" = on
expect_api 200 "power it off" POST /api/v1/vms/$idc/power '{"op": "stop", "mode": "hard"}'
expect_api 200 "unregister it" DELETE /api/v1/vms/$idc
out=$("$VELA" vm create --folder /prod --memsize 64 --disk 32m:qcow2:virtio --disk 16m cli-made)
check "vela vm create prints the id and the .vmx" test "$(echo "$out" | awk '{print $2}')" = "$VELA_HOME/datastores/local/cli-made/cli-made.vmx"
check "... with its disks" test -f "$VELA_HOME/datastores/local/cli-made/cli-made_1.vmdk" -a -f "$VELA_HOME/datastores/local/cli-made/cli-made.qcow2"
check "vela vm unregister of it" "$VELA" vm unregister cli-made

# ---- datastore files: browse, upload, download; hostile names change nothing
head -c 3000000 /dev/urandom > "$VELA_HOME/iso.bin"
mkdir -p "$VELA_HOME/datastores/local/iso"
check "vela ds upload" "$VELA" ds upload local "$VELA_HOME/iso.bin" iso/test.iso
check "the uploaded file is whole" cmp "$VELA_HOME/iso.bin" "$VELA_HOME/datastores/local/iso/test.iso"
check "no temporary file is left" test "$(ls -A "$VELA_HOME/datastores/local/iso" | wc -l)" = 1
expect_error VELA_E_EXISTS "an upload never replaces a file" "$VELA" ds upload local "$VELA_HOME/iso.bin" iso/test.iso
check "vela ds browse lists it with its size" sh -c "'$VELA' ds browse local iso | grep -q '^file  3000000  test.iso'"
check "vela ds download" "$VELA" ds download local iso/test.iso "$VELA_HOME/back.bin"
check "the download is whole" cmp "$VELA_HOME/iso.bin" "$VELA_HOME/back.bin"
expect_error VELA_E_NOTFOUND "downloading a missing file" "$VELA" ds download local iso/none.iso "$VELA_HOME/none.bin"
check "a failed download leaves no file" test ! -e "$VELA_HOME/none.bin" -a ! -e "$VELA_HOME/none.bin.partial"
ln -s /etc "$VELA_HOME/datastores/local/escape"
before=$(find "$VELA_HOME" / -maxdepth 1 2>/dev/null | wc -l)
for bad in '..%2F..%2Fevil' 'iso/..%2F..%2Fevil' '.%2Fx' 'iso%2F%2Fx' 'a%01b' 'escape/passwd2' 'escape/passwd' '%2Fetc%2Fevil'; do
	code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" -T "$VELA_HOME/iso.bin" "http://velad/api/v1/datastores/local/files/$bad")
	case $code in 400|403|404|409) pass "hostile upload name $bad is refused ($code)" ;; *) fail "hostile upload name $bad is refused (HTTP $code)" ;; esac
done
check "nothing was written outside the datastore" test ! -e /etc/passwd2 -a ! -e "$VELA_HOME/evil" -a ! -e "$VELA_HOME/datastores/evil"
expect_api 403 "download through a link out of the datastore is refused" GET /api/v1/datastores/local/files/escape/passwd
expect_api 403 "browse through a link out of the datastore is refused" GET "/api/v1/datastores/local/browse?path=escape"
expect_api 400 "browse with .. is refused" GET "/api/v1/datastores/local/browse?path=../.."
expect_api 400 "a bad datastore name is refused" GET "/api/v1/datastores/.hidden/browse"
expect_api 404 "a datastore name with a slash in it is no resource" GET "/api/v1/datastores/..%2Fx/browse"
expect_api 404 "an unknown datastore is a 404" GET "/api/v1/datastores/nope/browse"
rm "$VELA_HOME/datastores/local/escape"

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

# ---- live events (Server-Sent Events)
curl -sN -m 60 --unix-socket "$SOCK" "http://velad/api/v1/events/stream?vm=$id2" > "$VELA_HOME/stream-root.out" 2>/dev/null &
stream_pid=$!
sleep 0.5

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
sleep 0.5
kill "$stream_pid" 2>/dev/null
check "the live stream carried VM 2's power events as they happened" test "$(grep -c '^data: .*"type":"vm.power"' "$VELA_HOME/stream-root.out")" -ge 3
check "... and only VM 2's" sh -c "! grep '^data:' '$VELA_HOME/stream-root.out' | grep -v '\"vm\":$id2,'"

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
# The guest runs its agent: a soft stop goes through it (pre-halt command).
"$VELA" vm console --wait "VELA-GUEST-PRE-HALT ran" --timeout 60 "$vmx1" > "$VELA_HOME/waiter.out" 2>&1 &
waiter=$!
sleep 0.5
expect_api 200 "soft stop of VM 1" POST /api/v1/vms/$id1/power '{"op": "stop", "mode": "soft"}'
check "... VM 1 is off" test "$(jq_reply .status.state)" = off
wait "$waiter"
check "the guest shut down cleanly through its agent (its pre-halt command ran)" test $? = 0

# A change made outside velad (straight to the supervisor) reaches its view.
expect_api 200 "power on VM 2 again" POST /api/v1/vms/$id2/power '{"op": "start"}'
"$VELA" vm stop hard "$vmx2" >/dev/null
seen=
for ((i = 0; i < 50; i++)); do
	[ "$(api GET /api/v1/vms | sed '$d' | jq -r ".vms[] | select(.id == $id2) | .state")" = off ] && { seen=1; break; }
	sleep 0.1
done
check "a VM stopped outside velad is listed off within seconds" test -n "$seen"
expect_api 200 "events of VM 2" GET "/api/v1/events?vm=$id2"
check "... and the change is an event" test "$(jq_reply '[.events[] | select(.type == "vm.state")] | length')" -ge 1

# A VM that goes off while velad is down is noticed at the next start.
expect_api 200 "power on VM 3" POST /api/v1/vms/$id3/power '{"op": "start"}'
kill -9 "$velad_pid"
wait "$velad_pid" 2>/dev/null
"$VELA" vm stop hard "$VELA_HOME/datastores/local/ds3/ds3.vmx" >/dev/null 2>&1
check "velad restarts again" start_velad
expect_api 200 "events of VM 3" GET "/api/v1/events?vm=$id3&severity=warning"
check "VM 3 going off unattended is a warning event" test "$(jq_reply '[.events[] | select(.type == "vm.off.unattended")] | length')" = 1

expect_api 200 "unregister VM 3 (off)" DELETE /api/v1/vms/$id3
check "its files stay" test -f "$VELA_HOME/datastores/local/ds3/ds3.vmx"
expect_api 404 "it is gone from the inventory" GET /api/v1/vms/$id3
expect_api 200 "audit events" GET "/api/v1/events?severity=audit&limit=1000"
check "the unregistration is an audit event" test "$(jq_reply "[.events[] | select(.type == \"vm.unregistered\" and .vm == $id3)] | length")" = 1

# ---- tasks: long operations have a record, progress, a result and a cancel
expect_api 200 "power on VM 2 (a task, waited for)" POST /api/v1/vms/$id2/power '{"op": "start"}'
ptask=$(jq_reply .task)
expect_api 200 "its task" GET /api/v1/tasks/$ptask
check "... vm.power.start by root, ended in success with the status" test "$(jq_reply '.task.type + "|" + .task.user + "|" + .task.state + "|" + .task.result.state + "|" + (.task.progress | tostring)')" = "vm.power.start|root|success|on|100"
check "guest 2 runs again" wait_console "$vmx2" "VELA-GUEST-TICK 2" 1 60

# ---- reconfiguring a running VM: the edits wait for the next power cycle
run_in_guest "$vmx2" 'set -- $(grep MemTotal /proc/meminfo); echo CPUS-$(grep -c ^processor /proc/cpuinfo)-MEM-$(($2/1024))'
check "the guest has 1 vCPU" console_has "$vmx2" "CPUS-1-MEM-"
expect_api 200 "reconfigure the running VM: 2 vCPUs, 400 MiB, a note" PATCH /api/v1/vms/$id2 '{"vcpus": 2, "memsize": 400, "annotation": "db tier"}'
check "... the edits are pending" test "$(jq_reply '[.vm.status.pending_changes[].key] | sort | join(",")')" = "annotation,memsize,numvcpus"
check "... the settings show the next power-on's values" test "$(jq_reply '(.vm.settings.vcpus | tostring) + "|" + (.vm.settings.memsize | tostring)')" = "2|400"
check "... the VM kept running" test "$(state_of "$vmx2")" = on
check "... and its .vmx says so" grep -qx 'numvcpus = "2"' "$vmx2"
expect_api 400 "a bad value is refused" PATCH /api/v1/vms/$id2 '{"vcpus": 0}'
expect_api 400 "an unknown setting is refused" PATCH /api/v1/vms/$id2 '{"colour": "red"}'
expect_api 400 "a wrong type is refused" PATCH /api/v1/vms/$id2 '{"memsize": "lots"}'
expect_api 400 "an empty change set is refused" PATCH /api/v1/vms/$id2 '{}'
expect_api 400 "a non-object is refused" PATCH /api/v1/vms/$id2 '[1]'
check "the refused edits changed nothing" grep -qx 'numvcpus = "2"' "$vmx2"
expect_api 409 "deleting a running VM is refused" DELETE "/api/v1/vms/$id2?files=1"
check "... its files stay" test -f "$vmx2"
expect_api 202 "a hard stop with wait=0 answers 202 with its task" POST "/api/v1/vms/$id2/power?wait=0" '{"op": "stop", "mode": "hard"}'
stask=$(jq_reply .task.id)
expect_api 200 "wait for the task" GET "/api/v1/tasks/$stask?wait=60"
check "... it ended with the VM off" test "$(jq_reply '.task.state + "|" + .task.result.state')" = "success|off"
expect_api 200 "power on again" POST /api/v1/vms/$id2/power '{"op": "start"}'
expect_api 200 "get it" GET /api/v1/vms/$id2
check "after the power cycle nothing is pending" test "$(jq_reply '.vm.status.pending_changes | length')" = 0
run_in_guest "$vmx2" 'set -- $(grep MemTotal /proc/meminfo); echo CPUS-$(grep -c ^processor /proc/cpuinfo)-MEM-$(($2/1024))'
check "the guest has 2 vCPUs now" console_has "$vmx2" "CPUS-2-MEM-"
mem=$("$VELA" vm console --dump "$vmx2" | grep -a -o 'CPUS-2-MEM-[0-9]*' | tail -n1 | sed 's/.*MEM-//')
if [ -n "$mem" ] && [ "$mem" -gt 300 ]; then pass "the guest sees the new memory ($mem MiB)"; else fail "the guest sees the new memory (${mem:-?} MiB)"; fi
expect_api 200 "hard stop" POST /api/v1/vms/$id2/power '{"op": "stop", "mode": "hard"}'
expect_api 200 "reconfigure the VM while off: at once, nothing pending" PATCH /api/v1/vms/$id2 '{"vcpus": 1, "memsize": 256, "annotation": ""}'
check "... the .vmx has it" grep -qx 'numvcpus = "1"' "$vmx2"
check "... an empty annotation removes the key" sh -c "! grep -q '^annotation' '$vmx2'"
expect_api 200 "VM 2's tasks" GET "/api/v1/tasks?vm=$id2"
check "... the power operations are there, oldest first" test "$(jq_reply '[.tasks[] | select(.id == '"$ptask"' or .id == '"$stask"') | .id] | join(",")')" = "$ptask,$stask"
expect_api 200 "audit events of VM 2" GET "/api/v1/events?vm=$id2&severity=audit"
check "the reconfiguration is an audit event marked pending" test "$(jq_reply '[.events[] | select(.type == "vm.reconfigured" and (.message | test("pending")))] | length')" = 1
expect_api 409 "cancelling an ended task is refused" POST /api/v1/tasks/$stask/cancel
expect_api 404 "an unknown task is a 404" GET /api/v1/tasks/999999
expect_api 400 "a bad task query is a 400" GET "/api/v1/tasks?limit=lots"

# A slow upload is a task with progress; cancelling it stops it and leaves nothing.
head -c 3000000 /dev/urandom > "$VELA_HOME/slow.bin"
curl -s --limit-rate 300k --unix-socket "$SOCK" -T "$VELA_HOME/slow.bin" http://velad/api/v1/datastores/local/files/iso/slow.iso > /dev/null 2>&1 &
uploader=$!
utask=
for ((i = 0; i < 50; i++)); do
	sleep 0.2
	utask=$(api GET "/api/v1/tasks?state=running" | sed '$d' | jq -r '[.tasks[] | select(.type == "datastore.upload" and .progress > 0)][0].id // empty')
	[ -n "$utask" ] && break
done
check "a running upload is a task with progress" test -n "$utask"
expect_api 200 "cancel the upload" POST /api/v1/tasks/$utask/cancel
timeout 10 tail --pid=$uploader -f /dev/null
check "the uploader was cut off at once" sh -c "! kill -0 $uploader 2>/dev/null"
expect_api 200 "the upload's task" GET /api/v1/tasks/$utask
check "... ended cancelled (VELA_E_CANCELED)" test "$(jq_reply '.task.state + "|" + .task.error.name')" = "cancelled|VELA_E_CANCELED"
check "... and left no file" test ! -e "$VELA_HOME/datastores/local/iso/slow.iso"
check "... nor a temporary one" sh -c "! ls -A '$VELA_HOME/datastores/local/iso' | grep -q vela-upload"

# ---- disk snapshots through velad (tasks), live and offline
expect_api 200 "create a VM for snapshots" POST /api/v1/vms/create '{"name": "snappy", "disks": [{"size": "32m"}], "nic": false}'
ids=$(jq_reply .vm.id)
expect_api 200 "power it on" POST /api/v1/vms/$ids/power '{"op": "start"}'
expect_api 200 "take a live snapshot" POST /api/v1/vms/$ids/snapshots '{"name": "before patch", "description": "live"}'
check "... live, one disk, a task" test "$(jq_reply '(.snapshot.live | tostring) + "|" + (.snapshot.disks | tostring) + "|" + (.task > 0 | tostring)')" = "true|1|true"
check "... the running disk is a redo log now (qemu-img sees its backing file)" sh -c "qemu-img info --output=json \"\$(grep '^scsi0:0.fileName' '$VELA_HOME/datastores/local/snappy/snappy.vmx' | cut -d'\"' -f2 | sed 's|^|$VELA_HOME/datastores/local/snappy/|')\" | jq -e '.\"backing-filename\"'"
expect_api 409 "revert while on is refused" POST /api/v1/vms/$ids/snapshots/revert '{"name": "before patch"}'
expect_api 200 "hard stop" POST /api/v1/vms/$ids/power '{"op": "stop", "mode": "hard"}'
expect_api 200 "take a second snapshot (off)" POST /api/v1/vms/$ids/snapshots '{"name": "after patch"}'
expect_api 200 "the snapshot tree" GET /api/v1/vms/$ids/snapshots
check "... two, the second current, child of the first" test "$(jq_reply '[.snapshots[] | .name + ":" + (.current | tostring)] | join(",")')" = "before patch:false,after patch:true"
expect_api 200 "revert to the first" POST /api/v1/vms/$ids/snapshots/revert '{"name": "before patch"}'
expect_api 404 "an unknown snapshot is a 404" POST /api/v1/vms/$ids/snapshots/delete '{"name": "never"}'
expect_api 400 "a snapshot without a name is a 400" POST /api/v1/vms/$ids/snapshots '{}'
expect_api 200 "delete the second" POST /api/v1/vms/$ids/snapshots/delete '{"name": "after patch"}'
check "vela vm snapshot list VM (through velad)" sh -c "'$VELA' vm snapshot list snappy | grep -q '^before patch (current)'"
check "vela vm snapshot delete VM NAME (through velad)" "$VELA" vm snapshot delete snappy "before patch"
check "... none left" sh -c "'$VELA' vm snapshot list snappy | grep -q '^no snapshots'"
check "the disk chain is whole (qemu-img check)" sh -c "for f in '$VELA_HOME'/datastores/local/snappy/*.vmdk; do qemu-img check -q \"\$f\" || exit 1; done"
expect_api 200 "audit events of the snapshots" GET "/api/v1/events?vm=$ids&severity=audit"
check "... one per operation" test "$(jq_reply '[.events[] | select(.type == "vm.snapshot")] | length')" = 5
expect_api 200 "delete the snapshot VM with its files" DELETE "/api/v1/vms/$ids?files=1"

# ---- questions through the API: a copied VM asks about its identity
cp -a --sparse=always "$(dirname "$vmx1")" "$VELA_HOME/vms/copied"
expect_api 200 "register a copy of VM 1" POST /api/v1/vms "{\"config\": \"$VELA_HOME/vms/copied/api1.vmx\", \"name\": \"the copy\"}"
idq=$(jq_reply .vm.id)
expect_api 200 "power on the copy: it stops at a question" POST /api/v1/vms/$idq/power '{"op": "start"}'
check "... stuck" test "$(jq_reply .status.state)" = stuck
expect_api 200 "list questions" GET /api/v1/questions
check "... the copy's question, with its choices" test "$(jq_reply '.questions[] | (.vm | tostring) + "|" + (.question.choices | join(","))')" = "$idq|keep,create,cancel"
check "vela question list shows it" sh -c "'$VELA' question list | grep -q 'the copy'"
expect_api 200 "answer it" POST /api/v1/vms/$idq/answer '{"choice": "create"}'
check "... the copy is on" test "$(jq_reply .status.state)" = on
expect_api 200 "no questions left" GET /api/v1/questions
check "... none" test "$(jq_reply '.questions | length')" = 0
expect_api 200 "hard stop of the copy" POST /api/v1/vms/$idq/power '{"op": "stop", "mode": "hard"}'

# ---- deleting a VM with its files
shared=$VELA_HOME/shared-base.vmdk
"$VELA" disk create -s 16m "$shared" > /dev/null
echo "scsi0:1.present = \"TRUE\"" >> "$VELA_HOME/vms/copied/api1.vmx"
echo "scsi0:1.fileName = \"$shared\"" >> "$VELA_HOME/vms/copied/api1.vmx"
expect_api 200 "delete the copy with its files" DELETE "/api/v1/vms/$idq?files=1"
check "... its folder is gone" test ! -e "$VELA_HOME/vms/copied"
check "... a disk outside its folder is kept (it may be shared)" test -f "$shared"
check "... and reported kept" test "$(jq_reply '.deleted.kept | join(",")')" = "$shared"
check "... VM 1, the original, is untouched" test -f "$vmx1" -a -f "$(dirname "$vmx1")/disk.img"
expect_api 404 "the copy is gone from the inventory" GET /api/v1/vms/$idq
expect_api 200 "events of the copy" GET "/api/v1/events?vm=$idq&severity=audit"
check "the deletion is an audit event" test "$(jq_reply '[.events[] | select(.type == "vm.deleted")] | length')" = 1
expect_api 200 "create a VM to delete with the CLI" POST /api/v1/vms/create '{"name": "short lived", "disks": [{"size": "8m"}]}'
check "vela vm delete --files" sh -c "'$VELA' vm delete --files 'short lived' | grep -q '^removed [0-9]* files'"
check "... its folder is gone" test ! -e "$VELA_HOME/datastores/local/short lived"

# ---- datastores: add a folder, low-space events, remove it
small=$VELA_HOME/small-mnt
mkdir -p "$small"
if mount -t tmpfs -o size=8m vela-test-ds "$small"; then
	expect_api 200 "add a datastore" POST /api/v1/datastores "{\"name\": \"small\", \"path\": \"$small\"}"
	check "it is listed" test "$(api GET /api/v1/datastores | sed '$d' | jq -r '.datastores[] | select(.name == "small") | .capacity')" = 8388608
	expect_api 409 "the same folder twice is refused" POST /api/v1/datastores "{\"name\": \"small2\", \"path\": \"$small\"}"
	expect_api 400 "a relative path is refused" POST /api/v1/datastores '{"name": "rel", "path": "x/y"}'
	expect_api 404 "a missing folder is refused" POST /api/v1/datastores '{"name": "gone", "path": "/nonexistent/dir"}'
	expect_api 400 "a bad name is refused" POST /api/v1/datastores "{\"name\": \"../up\", \"path\": \"$small\"}"
	head -c 7900000 /dev/urandom > "$VELA_HOME/fill.bin"
	check "upload into it" "$VELA" ds upload small "$VELA_HOME/fill.bin" fill.bin
	check "a datastore short of space is a warning event" wait_event datastore.space.low warning
	expect_error VELA_E_DISKFULL "an upload larger than the free space is refused" "$VELA" ds upload small "$VELA_HOME/iso.bin" more.bin
	check "... and leaves nothing" test "$(ls -A "$small")" = fill.bin
	rm "$small/fill.bin"
	check "... and its recovery an event" wait_event datastore.space.ok info
	expect_api 200 "create a VM in it" POST /api/v1/vms/create '{"name": "onsmall", "datastore": "small"}'
	ids=$(jq_reply .vm.id)
	expect_api 409 "a datastore with registered VMs cannot be removed" DELETE /api/v1/datastores/small
	expect_api 200 "unregister that VM" DELETE /api/v1/vms/$ids
	check "vela ds remove" "$VELA" ds remove small
	check "... it is no longer listed" sh -c "! '$VELA' ds list | grep -q '^small '"
	check "... its files stay" test -f "$small/onsmall/onsmall.vmx"
	expect_api 409 "the default datastore cannot be removed" DELETE /api/v1/datastores/local
	check "vela ds add" "$VELA" ds add small "$small"
	check "vela ds remove again" "$VELA" ds remove small
	umount "$small"
else
	fail "mount a tmpfs for the datastore tests"
fi

# ---- the OpenAPI document: public, and it names every route of api.h
out=$(curl -sk "$URL/api/v1/openapi.json")
check "the OpenAPI document is served without a login" test "$(echo "$out" | jq -r .openapi)" = 3.0.3
documented=$(echo "$out" | jq -r '.paths | keys[]' | sort)
routes=$(grep -o "/api/v1/[A-Za-z/._{}?=&-]*" "$TOP/src/api/api.h" | sed 's|/api/v1||; s|?.*||; s|ID|{id}|; s|NAME|{name}|; s|REL|{path}|; s|KIND|{kind}|' | sort -u)
if [ "$documented" = "$routes" ]; then pass "openapi.json documents every route in api.h"; else fail "openapi.json documents every route in api.h: $(diff <(echo "$routes") <(echo "$documented") | tr '\n' ' ')"; fi

# ---- HTTPS: logins (PAM), sessions, API tokens and the permission matrix
for u in "$RO" "$OP" "$AD" "$NOBODY"; do useradd -M -s /usr/sbin/nologin "$u"; echo "$u:$PASSWORD" | chpasswd; done
groupadd "$GRP" && usermod -a -G "$GRP" "$AD"
# https METHOD PATH [BODY] with $token as the bearer (empty: none).
token=
https() {
	local body=() auth=()
	[ $# -ge 3 ] && body=(-H 'Content-Type: application/json' --data-binary "$3")
	[ -n "$token" ] && auth=(-H "Authorization: Bearer $token")
	curl -sk -m 60 -w '\n%{http_code}' "${auth[@]}" -X "$1" "${body[@]}" "$URL$2"
}
expect_https() {
	local want=$1 what=$2 out got
	shift 2
	out=$(https "$@")
	reply=$(echo "$out" | sed '$d')
	got=$(echo "$out" | tail -n1)
	if [ "$got" = "$want" ]; then pass "$what"; else fail "$what (HTTP $got, want $want: $reply)"; fi
}
login() {   # login USER [PASSWORD]: sets $token
	token=
	expect_https 200 "login as ${1%%[0-9]*}" POST /api/v1/session "{\"user\": \"$1\", \"password\": \"${2:-$PASSWORD}\"}"
	token=$(jq_reply .session.token)
}
out=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$HTTP_PORT/api/v1/vms?x=1")
check "plain HTTP redirects to HTTPS" test "$out" = "301 $URL/api/v1/vms?x=1"
check "a self-signed certificate was made at first start" test -s "$VELA_HOME/tls/velad.crt"
check "its key is private" test "$(stat -c %a "$VELA_HOME/tls/velad.key")" = 600
check "the certificate names the host" sh -c "curl -skv '$URL/api/v1/host' 2>&1 | grep -q 'subject: .*CN=$(hostname)'"
expect_https 401 "no credentials: 401" GET /api/v1/vms
check "... VELA_E_AUTH" test "$(jq_reply .error.name)" = VELA_E_AUTH
expect_https 401 "a wrong password is refused" POST /api/v1/session "{\"user\": \"$NOBODY\", \"password\": \"wrong\"}"
expect_https 401 "an unknown user is refused" POST /api/v1/session '{"user": "no-such-user-x", "password": "x"}'
expect_https 400 "a login without password is a 400" POST /api/v1/session "{\"user\": \"$NOBODY\"}"
token=vs-0000000000000000000000000000000000000000000000000000000000000000
expect_https 401 "a made-up session token is refused" GET /api/v1/vms
check "... VELA_E_SESSION" test "$(jq_reply .error.name)" = VELA_E_SESSION

# Grants (through the local socket, as root).
expect_api 200 "grant readonly on VM 1" POST /api/v1/permissions "{\"principal\": \"user:$RO\", \"scope\": \"vm:$id1\", \"role\": \"readonly\"}"
expect_api 200 "grant operator on folder /prod" POST /api/v1/permissions "{\"principal\": \"user:$OP\", \"scope\": \"folder:/prod\", \"role\": \"operator\"}"
expect_api 200 "grant admin on /prod to a group" POST /api/v1/permissions "{\"principal\": \"group:$GRP\", \"scope\": \"folder:/prod\", \"role\": \"admin\"}"
expect_api 400 "a bad scope is refused" POST /api/v1/permissions "{\"principal\": \"user:$RO\", \"scope\": \"folder:../x\", \"role\": \"admin\"}"
expect_api 400 "a bad role is refused" POST /api/v1/permissions "{\"principal\": \"user:$RO\", \"scope\": \"host\", \"role\": \"god\"}"
expect_api 400 "a bad principal is refused" POST /api/v1/permissions '{"principal": "user:a b", "scope": "host", "role": "admin"}'
expect_api 200 "list grants" GET /api/v1/permissions
check "three grants" test "$(jq_reply '.permissions | length')" = 3

login "$RO"
expect_https 200 "readonly: list" GET /api/v1/vms
check "readonly sees only its VM" test "$(jq_reply '[.vms[].id] | join(",")')" = "$id1"
check "... with its role" test "$(jq_reply '.vms[0].role')" = readonly
expect_https 200 "readonly: get its VM" GET /api/v1/vms/$id1
expect_https 404 "readonly: another VM does not exist for it" GET /api/v1/vms/$id2
expect_https 403 "readonly cannot power on" POST /api/v1/vms/$id1/power '{"op": "start"}'
check "... VELA_E_PERM" test "$(jq_reply .error.name)" = VELA_E_PERM
expect_https 403 "readonly cannot unregister" DELETE /api/v1/vms/$id1
expect_https 403 "readonly cannot reconfigure" PATCH /api/v1/vms/$id1 '{"memsize": 300}'
expect_https 403 "readonly cannot add a datastore" POST /api/v1/datastores '{"name": "x", "path": "/tmp"}'
expect_https 200 "readonly: tasks" GET "/api/v1/tasks?limit=1000"
check "readonly sees only its VM's tasks" test "$(jq_reply "[.tasks[] | select(.vm != $id1)] | length")" = 0
expect_https 403 "readonly cannot grant" POST /api/v1/permissions "{\"principal\": \"user:$RO\", \"scope\": \"host\", \"role\": \"admin\"}"
expect_https 200 "readonly: events" GET "/api/v1/events?limit=1000"
check "readonly sees only its VM's events" test "$(jq_reply "[.events[] | select(.vm != $id1)] | length")" = 0
check "... and some of them" test "$(jq_reply '.events | length')" -gt 0
expect_https 403 "readonly on a VM only: datastores are refused" GET /api/v1/datastores
curl -skN -m 30 -H "Authorization: Bearer $token" "$URL/api/v1/events/stream" > "$VELA_HOME/stream-ro.out" 2>/dev/null &
ro_stream=$!
sleep 0.5
expect_api 409 "an event on VM 2, not readonly's (a refused stop)" POST /api/v1/vms/$id2/power '{"op": "stop", "mode": "hard"}'
"$VELA" vm autostart --off "$id1" > /dev/null   # an audit event on VM 1, readonly's
sleep 1.5
kill "$ro_stream" 2>/dev/null
check "readonly's live stream has VM 1's event" grep -q '"type":"vm.autostart.set"' "$VELA_HOME/stream-ro.out"
check "... and nothing of VM 2's" sh -c "! grep -q '\"vm\":$id2,' '$VELA_HOME/stream-ro.out'"
out=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" -T "$VELA_HOME/iso.bin" "$URL/api/v1/datastores/local/files/iso/ro.iso")
check "readonly cannot upload (403)" test "$out" = 403
check "... and nothing was written" test ! -e "$VELA_HOME/datastores/local/iso/ro.iso"

login "$OP"
expect_https 200 "operator: list" GET /api/v1/vms
check "operator sees the VMs of its folder" test "$(jq_reply '[.vms[].id] | join(",")')" = "$id1"
expect_https 200 "operator powers on" POST /api/v1/vms/$id1/power '{"op": "start"}'
check "the guest booted for the operator" wait_console "$vmx1" "VELA-GUEST-TICK 2" 1 60
expect_https 403 "operator cannot unregister" DELETE /api/v1/vms/$id1
expect_https 403 "operator cannot reconfigure" PATCH /api/v1/vms/$id1 '{"memsize": 300}'
check "... VELA_E_PERM" test "$(jq_reply .error.name)" = VELA_E_PERM
expect_https 403 "operator cannot delete with files" DELETE "/api/v1/vms/$id1?files=1"
expect_https 403 "operator cannot register" POST /api/v1/vms "{\"config\": \"$vmx2\", \"folder\": \"/prod\"}"
expect_https 200 "operator powers off" POST /api/v1/vms/$id1/power '{"op": "stop", "mode": "hard"}'
expect_api 200 "events of VM 1 (root)" GET "/api/v1/events?vm=$id1&severity=audit&limit=1000"
check "the operator's power operations are audit events with its name" test "$(jq_reply "[.events[] | select(.type == \"vm.power\" and .user == \"$OP\")] | length")" = 2

login "$AD"
expect_https 200 "admin through its group: list" GET /api/v1/vms
check "... sees /prod" test "$(jq_reply '[.vms[].id] | join(",")')" = "$id1"
check "... as admin" test "$(jq_reply '.vms[0].role')" = admin
mkdir -p "$VELA_HOME/datastores/local/ad4"
cp "$vmx2" "$VELA_HOME/datastores/local/ad4/ad4.vmx"
expect_https 403 "folder admin cannot register at the root" POST /api/v1/vms '{"config": "[local] ad4/ad4.vmx"}'
expect_https 200 "folder admin registers in its folder" POST /api/v1/vms '{"config": "[local] ad4/ad4.vmx", "folder": "/prod/web"}'
id4=$(jq_reply .vm.id)
expect_https 200 "folder admin reconfigures in its folder" PATCH /api/v1/vms/$id4 '{"memsize": 300, "name": "renamed"}'
check "... renamed" test "$(jq_reply .vm.name)" = renamed
expect_https 403 "folder admin cannot move a VM out of its folder" PATCH /api/v1/vms/$id4 '{"folder": "/"}'
expect_https 200 "folder admin unregisters it" DELETE /api/v1/vms/$id4
expect_https 403 "folder admin cannot list grants" GET /api/v1/permissions
expect_https 200 "create an API token" POST /api/v1/tokens '{"name": "ci job"}'
secret=$(jq_reply .token.secret)
tid=$(jq_reply .token.id)
check "the token secret is shown" test "${secret#vt-}" != "$secret"
check "only a digest is stored" sh -c "! sqlite3 '$VELA_HOME/host.db' 'select digest from tokens' | grep -q '${secret#vt-}'"
session=$token
expect_https 200 "log out" DELETE /api/v1/session
expect_https 401 "the session is gone after logout" GET /api/v1/vms
token=$secret
expect_https 200 "the API token works" GET /api/v1/vms
check "... as its user" test "$(jq_reply '.vms | length')" = 1
expect_https 200 "delete the API token (with itself)" DELETE /api/v1/tokens/$tid
expect_https 401 "a deleted token is refused" GET /api/v1/vms

login "$NOBODY"
expect_https 200 "no grants: the list is empty" GET /api/v1/vms
check "... empty" test "$(jq_reply '.vms | length')" = 0
expect_https 404 "no grants: VM 1 does not exist" GET /api/v1/vms/$id1
expect_https 200 "no grants: events" GET "/api/v1/events?limit=1000"
check "no grants: no events at all" test "$(jq_reply '.events | length')" = 0

# ---- the vela CLI through velad: local socket and --host
check "vela vm list (socket) names the VMs" sh -c "'$VELA' vm list | grep -q 'web server 2'"
check "vela --json vm list is the inventory" test "$("$VELA" --json vm list | jq -r '.[0].name')" = api1
# libcurl (and the TLS stack behind it) loads only for commands that talk to
# velad: linked, it made every local command 7 ms slower to start.
check "vela vm list loads libcurl when it runs" sh -c "LD_DEBUG=files '$VELA' vm list 2>&1 | grep -q 'file=libcurl'"
check "... local commands (vela disk info) load neither libcurl nor GnuTLS" sh -c \
	"'$VELA' disk create -s 1m '$VELA_HOME/startup.vmdk' >/dev/null && LD_DEBUG=files '$VELA' disk info '$VELA_HOME/startup.vmdk' > '$VELA_HOME/ld.log' 2>&1 && grep -q 'file=libc.so' '$VELA_HOME/ld.log' && ! grep -qE 'file=lib(curl|gnutls)' '$VELA_HOME/ld.log'"
check "vela host info" sh -c "'$VELA' host info | grep -q '^vms: 2 (0 running)'"
check "vela ds list" sh -c "'$VELA' ds list | grep -q local"
expect_error VELA_E_NOTFOUND "vela vm start of an unknown name" "$VELA" vm start "no such vm"
check "vela vm start NAME goes through velad" "$VELA" vm start "web server 2"
check "... the guest runs" wait_console "$vmx2" "VELA-GUEST-TICK 2" 1 60
check "vela vm getstate NAME" test "$("$VELA" vm getstate "web server 2")" = on
check "... the same as the .vmx says directly" test "$(state_of "$vmx2")" = on
"$VELA" --json event follow --vm "web server 2" --count 1 --timeout 60 > "$VELA_HOME/follow.out" 2>&1 &
follower=$!
sleep 1
check "vela vm stop hard NAME" "$VELA" vm stop hard "web server 2"
wait "$follower"
check "vela event follow saw the stop" grep -q '"message": *"stop hard"\|"message":"stop hard"' "$VELA_HOME/follow.out"
check "vela vm set NAME KEY=VALUE" "$VELA" vm set "web server 2" memsize=300 annotation="from the CLI"
check "... the .vmx has them" sh -c "grep -qx 'memsize = \"300\"' '$vmx2' && grep -qx 'annotation = \"from the CLI\"' '$vmx2'"
expect_error VELA_E_INVAL "vela vm set with a word that is not KEY=VALUE" "$VELA" vm set "web server 2" memsize
ctask=$("$VELA" vm start --no-wait "web server 2")
check "vela vm start --no-wait prints the task's id" test "${ctask:-0}" -gt 0
check "vela task wait ID" sh -c "'$VELA' task wait --timeout 60 $ctask | grep -q ' success '"
check "vela task list --state success shows it" sh -c "'$VELA' task list --state success | grep -q '^$ctask '"
check "vela --json task get" test "$("$VELA" --json task get "$ctask" | jq -r .result.state)" = on
check "a VM started by a task runs" wait_console "$vmx2" "VELA-GUEST-TICK 2" 1 60
check "vela vm set on a running VM says what is pending" sh -c "'$VELA' vm set 'web server 2' vcpus=2 | grep -q 'pending until the next power cycle: numvcpus'"
expect_error VELA_E_BADSTATE "vela task cancel of an ended task" "$VELA" task cancel "$ctask"
check "vela vm stop hard (again)" "$VELA" vm stop hard "web server 2"
# Hardware changes: a new virtio disk reaches the guest; removing it again.
check "vela vm set add-disk, add-nic, disk-mode" "$VELA" vm set "$id1" add-disk=16m:raw:virtio add-nic=nat disk-mode=scsi0:0:independent-persistent
check "... the .vmx passes vela vmx check" "$VELA" vmx check "$vmx1"
check "... the new disk is a 16 MiB raw image" sh -c "qemu-img info --output=json '$(dirname "$vmx1")/api1.img' | jq -e '.\"virtual-size\" == 16777216 and .format == \"raw\"'"
check "... on the first free virtio unit" grep -qx 'virtio0:0.fileName = "api1.img"' "$vmx1"
check "... and the mode of scsi0:0" grep -qx 'scsi0:0.mode = "independent-persistent"' "$vmx1"
check "power on with the new disk" "$VELA" vm start "$id1"
check "the guest sees the added disk (32768 sectors)" wait_console "$vmx1" "VELA-GUEST-DISK: vda sectors=32768" 1 60
check "the guest sees its first disk too" console_has "$vmx1" "VELA-GUEST-DISK: sda"
check "hard stop" "$VELA" vm stop hard "$id1"
check "vela vm set remove=DEVICE" "$VELA" vm set "$id1" remove=virtio0:0 remove=ethernet0 disk-mode=scsi0:0:persistent
check "... its keys are gone" sh -c "! grep -q '^virtio0:0\.\|^ethernet0\.' '$vmx1'"
expect_error VELA_E_NOTFOUND "removing a device the VM does not have" "$VELA" vm set "$id1" remove=virtio0:5
check "vela event list --severity audit" sh -c "'$VELA' event list --severity audit --limit 1000 | grep -q vm.registered"
export VELA_PASSWORD=$PASSWORD
check "vela --host --user logs in with PAM" sh -c "'$VELA' --host 127.0.0.1:$HTTPS_PORT --insecure --user $AD vm list | grep -q api1"
check "... and sees only what its grants allow" test "$("$VELA" --json --host 127.0.0.1:$HTTPS_PORT --insecure --user "$AD" vm list | jq length)" = 1
check "--ca with velad's certificate verifies it" "$VELA" --host localhost:$HTTPS_PORT --ca "$VELA_HOME/tls/velad.crt" --user "$AD" vm list
expect_error VELA_E_AUTH "without --insecure or --ca a self-signed certificate is refused" "$VELA" --host 127.0.0.1:$HTTPS_PORT --user "$AD" vm list
VELA_PASSWORD=wrong expect_error VELA_E_AUTH "a wrong password over the CLI" "$VELA" --host 127.0.0.1:$HTTPS_PORT --insecure --user "$RO" vm list
expect_error VELA_E_PERM "an operator cannot unregister over the CLI" "$VELA" --host 127.0.0.1:$HTTPS_PORT --insecure --user "$OP" vm unregister "$id1"
secret=$("$VELA" --host 127.0.0.1:$HTTPS_PORT --insecure --user "$RO" token create "cli token")
check "vela token create prints the secret" test "${secret#vt-}" != "$secret"
check "VELA_TOKEN works with --host" sh -c "VELA_TOKEN=$secret '$VELA' --host 127.0.0.1:$HTTPS_PORT --insecure vm list | grep -q api1"
unset VELA_PASSWORD
check "vela perm list (socket)" sh -c "'$VELA' perm list | grep -q 'user:$OP'"
gid=$("$VELA" perm grant "user:$NOBODY" host readonly)
check "vela perm grant prints the id" test -n "$gid"
check "vela perm revoke" "$VELA" perm revoke "$gid"
expect_error VELA_E_NOTFOUND "revoking it twice" "$VELA" perm revoke "$gid"

# Failed logins are events and get blocked.
token=
for i in 1 2 3 4 5; do https POST /api/v1/session "{\"user\": \"$OP\", \"password\": \"bad$i\"}" >/dev/null; done
expect_https 429 "after 5 failed logins even the right password is refused for a while" POST /api/v1/session "{\"user\": \"$OP\", \"password\": \"$PASSWORD\"}"
check "... VELA_E_LIMIT" test "$(jq_reply .error.name)" = VELA_E_LIMIT
expect_api 200 "failed-login events" GET "/api/v1/events?severity=warning&limit=1000"
check "failed logins are warning events" test "$(jq_reply "[.events[] | select(.type == \"user.login.failed\" and .user == \"$OP\")] | length")" -ge 5
expect_api 200 "revoke a grant" DELETE /api/v1/permissions/$(api GET /api/v1/permissions | sed '$d' | jq -r ".permissions[] | select(.principal == \"user:$RO\") | .id")
check "two grants left" test "$(api GET /api/v1/permissions | sed '$d' | jq '.permissions | length')" = 2

# ---- SIGTERM stops velad cleanly, removing its socket, even with a live stream open
curl -sN -m 60 --unix-socket "$SOCK" http://velad/api/v1/events/stream > /dev/null 2>&1 &
sleep 0.5
t0=$(date +%s%3N)
kill -TERM "$velad_pid"
wait "$velad_pid"
check "velad exits 0 on SIGTERM" test $? = 0
check "... within 5 s with a live stream open ($(( $(date +%s%3N) - t0 )) ms)" test $(( $(date +%s%3N) - t0 )) -lt 5000
velad_pid=
check "its socket is gone" test ! -e "$SOCK"
check_sanitizers "$VELA_HOME/velad.out" velad

finish
