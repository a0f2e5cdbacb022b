#!/bin/bash
# Browser consoles through velad: a WebSocket (Node's "ws" client, as a browser
# would speak it) bridged to a running VM's serial console and VNC display,
# over HTTPS with a PAM user's session and over the local socket; who may open
# them; and velad stopping with consoles open.
. "$(dirname "$0")/lib.sh"

VELAD=${VELAD:-$TOP/build/asan/src/velad/velad}
[ -x "$VELAD" ] || VELAD=$TOP/build/bin/velad
SOCK=$VELA_HOME/run/velad.sock
OP=velacop$$ RO=velacro$$
PASSWORD=Console-$$-pw
export NODE_PATH=${NODE_PATH:-/usr/share/nodejs}
WS="node $TOP/tests/integ/wsconsole.js"
velad_pid=
PORT=$(free_port)
URL=wss://127.0.0.1:$PORT/api/v1
stop_all() {
	[ -n "$velad_pid" ] && kill -9 "$velad_pid" 2>/dev/null
	for u in "$OP" "$RO"; do userdel "$u" >/dev/null 2>&1; done
	cleanup
}
trap stop_all EXIT

# Statistics every second here (20 s by default), so that a test sees several.
printf 'stats_interval_seconds = 1\n' > "$VELA_HOME/velad.conf"
"$VELAD" --foreground --https-port "$PORT" --http-port 0 --listen 127.0.0.1 > "$VELA_HOME/velad.out" 2>&1 &
velad_pid=$!
for ((i = 0; i < 100; i++)); do "$VELA" host info >/dev/null 2>&1 && break; sleep 0.1; done
check "velad starts" "$VELA" host info
if ! node -e "require('ws')" 2>/dev/null; then
	fail "Node's ws module is missing (install-deps installs node-ws)"
	finish
	exit 1
fi

vmx=$(make_vm con "${SCSI_DISK[@]}" "$CMDLINE" 'ethernet0.present = "TRUE"' 'ethernet0.virtualDev = "virtio"')
id=$("$VELA" vm register --folder /con "$vmx")
for u in "$OP" "$RO"; do useradd -M -s /usr/sbin/nologin "$u"; echo "$u:$PASSWORD" | chpasswd; done
"$VELA" perm grant "user:$OP" "vm:$id" operator > /dev/null
"$VELA" perm grant "user:$RO" "vm:$id" readonly > /dev/null
login() {   # login USER: prints a session token
	curl -sk -H 'Content-Type: application/json' --data-binary "{\"user\": \"$1\", \"password\": \"$PASSWORD\"}" \
		"https://127.0.0.1:$PORT/api/v1/session" | jq -r .session.token
}
optok=$(login "$OP")
rotok=$(login "$RO")
check "the operator logs in" test "${optok#vs-}" != "$optok"

out=$($WS "$URL/vms/$id/console/serial" --token "$optok" --timeout 5)
check "a console of a VM that is off is refused (409)" test "$out" = "HTTP 409"
check "power on" "$VELA" vm start "$id"
check "the guest's shell is up" wait_console "$vmx" "vela-guest# " 1 60

# The serial console: what the operator types runs in the guest, and its
# output comes back (the shell computes 6*7, so the echo of the typed line
# alone cannot match).
out=$($WS "$URL/vms/$id/console/serial" --token "$optok" --send 'echo IN-GUEST-$((6*7))-$(uname -s)\n' --expect "IN-GUEST-42-Linux" --timeout 30)
check "the serial console over HTTPS runs a command in the guest ($out)" test "$out" = "seen: IN-GUEST-42-Linux"
check "... the guest's console shows it too" console_has "$vmx" "IN-GUEST-42-Linux"
out=$($WS "$URL/vms/$id/console/serial" --token "$optok" --expect "VELA-GUEST-READY" --timeout 15)
check "a new console gets the scrollback first" test "$out" = "seen: VELA-GUEST-READY"
out=$($WS "$URL/vms/$id/console/serial" --token "$optok" --origin "https://127.0.0.1:$PORT" --expect "vela-guest# " --timeout 15)
check "a page of velad's own origin may open it" test "$out" = "seen: vela-guest# "
out=$($WS "ws+unix:$SOCK:/api/v1/vms/$id/console/serial" --send 'echo LOCAL-$((6*7))\n' --expect "LOCAL-42" --timeout 30)
check "the serial console over the local socket" test "$out" = "seen: LOCAL-42"

# The graphical console: QEMU's VNC server greets through the bridge.
out=$($WS "$URL/vms/$id/console/vnc" --token "$optok" --protocol binary --expect "RFB 003.008" --timeout 15)
check "the VNC console speaks RFB (subprotocol binary, as noVNC asks)" test "$out" = "seen: RFB 003.008"

# Performance statistics of the running VM and of the host.
run_in_guest "$vmx" 'dd if=/dev/zero of=/dev/sda bs=1M count=16 oflag=direct 2>/dev/null; sync'
# Network traffic to the user-mode network's own gateway (inside QEMU):
# 200 pings of 1400 bytes, counted by the guest's agent.
check "the guest sends on its NIC" run_in_guest "$vmx" 'ifconfig eth0 10.0.2.15 netmask 255.255.255.0 up && ping -q -c 200 -i 0.01 -s 1400 -w 10 10.0.2.2 >/dev/null 2>&1; echo PINGED-$((40+2))'
sleep 2.5
code=$(curl -sk -o "$VELA_HOME/stats.json" -w '%{http_code}' -H "Authorization: Bearer $rotok" "https://127.0.0.1:$PORT/api/v1/vms/$id/stats")
check "readonly may read the VM's statistics" test "$code" = 200
check "... several samples, a second apart" test "$(jq '.stats.samples | length' "$VELA_HOME/stats.json")" -ge 3
check "... its QEMU used CPU" test "$(jq '[.stats.samples[].cpu] | max > 0' "$VELA_HOME/stats.json")" = true
check "... and memory (resident > 16 MiB)" test "$(jq '[.stats.samples[].mem] | max > 16777216' "$VELA_HOME/stats.json")" = true
check "... the guest's 16 MiB write shows as a disk write rate" test "$(jq '[.stats.samples[].disk_wr] | add >= 16000000' "$VELA_HOME/stats.json")" = true
check "... and its 280 KB of pings as a network send rate" test "$(jq '[.stats.samples[].net_tx] | add >= 250000' "$VELA_HOME/stats.json")" = true
check "vela vm stats shows the network columns" sh -c "'$VELA' vm stats $id | head -1 | grep -q NET_TX_B/S"
check "vela vm stats" sh -c "'$VELA' vm stats $id | grep -c '^20' | grep -qv '^[012]$'"
check "vela --json host stats: the host's memory" test "$("$VELA" --json host stats | jq '.samples | length >= 2 and (.[-1].mem_total > .[-1].mem)')" = true
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $rotok" "https://127.0.0.1:$PORT/api/v1/host/stats")
check "host statistics need a grant on the host (readonly on a VM: 403)" test "$code" = 403

# A screenshot: a PNG of the screen QEMU shows, for operators.
code=$(curl -sk -o "$VELA_HOME/screen.png" -w '%{http_code}' -H "Authorization: Bearer $optok" "https://127.0.0.1:$PORT/api/v1/vms/$id/screenshot")
check "the operator gets a screenshot" test "$code" = 200
check "... a PNG (signature)" test "$(head -c 8 "$VELA_HOME/screen.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a
check "... of the VGA screen's size (720x400 or more)" test "$(od -An -tu1 -j16 -N4 "$VELA_HOME/screen.png" | awk '{print $1*16777216 + $2*65536 + $3*256 + $4}')" -ge 640
check "... and no file is left in the run folder" sh -c "! ls '$VELA_HOME'/run/vm/*/screen-*.png 2>/dev/null | grep -q ."
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $rotok" "https://127.0.0.1:$PORT/api/v1/vms/$id/screenshot")
check "readonly gets no screenshot (403)" test "$code" = 403

# Who may not.
out=$($WS "$URL/vms/$id/console/serial" --timeout 5)
check "no session: 401" test "$out" = "HTTP 401"
out=$($WS "$URL/vms/$id/console/serial" --token "$rotok" --timeout 5)
check "readonly: 403" test "$out" = "HTTP 403"
out=$($WS "$URL/vms/$id/console/serial" --token "$optok" --origin "https://evil.example" --timeout 5)
check "a page of another origin: 403 (cross-site WebSocket hijacking)" test "$out" = "HTTP 403"
out=$($WS "$URL/vms/999/console/serial" --token "$optok" --timeout 5)
check "an unknown VM: 404" test "$out" = "HTTP 404"
out=$($WS "$URL/vms/$id/console/audio" --token "$optok" --timeout 5)
check "an unknown console: 404" test "$out" = "HTTP 404"
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $optok" "https://127.0.0.1:$PORT/api/v1/vms/$id/console/serial")
check "a plain GET (no WebSocket handshake): 400" test "$code" = 400
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $optok" -H 'Connection: Upgrade' -H 'Upgrade: websocket' \
	-H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: bad' "https://127.0.0.1:$PORT/api/v1/vms/$id/console/serial")
check "a bad Sec-WebSocket-Key: 400" test "$code" = 400
n=$("$VELA" --json event list --vm "$id" --severity audit --limit 1000 | jq "[.[] | select(.type == \"vm.console\" and .user == \"$OP\")] | length")
check "opening a console is an audit event with the user ($n)" test "$n" -ge 4

# velad stops with consoles open: the browsers get "going away" (1001).
consoles_opened() { "$VELA" --json event list --vm "$id" --severity audit --limit 1000 | jq '[.[] | select(.type == "vm.console")] | length'; }
before=$(consoles_opened)
$WS "$URL/vms/$id/console/serial" --token "$optok" --expect NEVER --timeout 30 > "$VELA_HOME/open1.out" &
c1=$!
$WS "ws+unix:$SOCK:/api/v1/vms/$id/console/vnc" --expect NEVER --timeout 30 > "$VELA_HOME/open2.out" &
c2=$!
for ((i = 0; i < 100; i++)); do [ "$(consoles_opened)" -ge $((before + 2)) ] && break; sleep 0.1; done
sleep 0.3
t0=$(date +%s%N)
kill -TERM "$velad_pid"
wait "$velad_pid"
rc=$?
t=$((($(date +%s%N) - t0) / 1000000))
velad_pid=
check "velad exits 0 with consoles open" test "$rc" = 0
check "... within 5 s ($t ms)" test "$t" -lt 5000
wait "$c1" "$c2" 2>/dev/null
check "the consoles were closed with 1001 (going away): $(cat "$VELA_HOME/open1.out" "$VELA_HOME/open2.out" | cut -c1-60 | tr '\n' ' ')" sh -c "grep -q 'closed (1001)' '$VELA_HOME/open1.out' && grep -q 'closed (1001)' '$VELA_HOME/open2.out'"
check "the VM kept running" test "$(state_of "$vmx")" = on
"$VELA" vm stop hard "$vmx" > /dev/null
check_sanitizers "$VELA_HOME/velad.out" velad-console
finish
