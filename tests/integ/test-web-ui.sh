#!/bin/bash
# The web UI end to end: velad serves build/web over HTTPS; tests/web/ui.mjs
# drives Debian's Chromium (playwright-core) through login, power, the serial
# console, charts and a readonly user against a real guest.  Screenshots go
# to build/web-screenshots/.
. "$(dirname "$0")/lib.sh"

VELAD=${VELAD:-$TOP/build/asan/src/velad/velad}
[ -x "$VELAD" ] || VELAD=$TOP/build/bin/velad
AD=velauiad$$ RO=velauiro$$
PASSWORD=Ui-$$-pw
velad_pid=
stop_all() {
	[ -n "$velad_pid" ] && kill -9 "$velad_pid" 2>/dev/null
	for u in "$AD" "$RO"; do userdel "$u" >/dev/null 2>&1; done
	cleanup
}
trap stop_all EXIT
for need in "$TOP/build/web/index.html" /usr/bin/chromium "$TOP/web/node_modules/playwright-core"; do
	if [ ! -e "$need" ]; then
		fail "missing $need (make web; install-deps installs chromium)"
		finish
		exit 1
	fi
done
port=$(free_port)
printf 'stats_interval_seconds = 1\n' > "$VELA_HOME/velad.conf"
"$VELAD" --foreground --https-port "$port" --http-port 0 --listen 127.0.0.1 --web-root "$TOP/build/web" > "$VELA_HOME/velad.out" 2>&1 &
velad_pid=$!
for ((i = 0; i < 100; i++)); do "$VELA" host info >/dev/null 2>&1 && break; sleep 0.1; done
check "velad starts with the UI" "$VELA" host info
vmx=$(make_vm webvm "${SCSI_DISK[@]}" "$CMDLINE")
"$VELA" vm register --folder /web "$vmx" > /dev/null
# A copy of it asks about its identity at power-on (a question for the UI).
"$VELA" vm start "$vmx" > /dev/null && "$VELA" vm stop hard "$vmx" > /dev/null
cp -a --sparse=always "$(dirname "$vmx")" "$VELA_HOME/vms/webcopy"
"$VELA" vm register --folder /web --name webcopy "$VELA_HOME/vms/webcopy/webvm.vmx" > /dev/null
head -c 2000000 /dev/urandom > "$VELA_HOME/installer.iso"
for u in "$AD" "$RO"; do useradd -M -s /usr/sbin/nologin "$u"; echo "$u:$PASSWORD" | chpasswd; done
"$VELA" perm grant "user:$AD" host admin > /dev/null
"$VELA" perm grant "user:$RO" folder:/web readonly > /dev/null
code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port/")
check "velad serves the UI's page" test "$code" = 200
check "... with a content security policy" sh -c "curl -skI 'https://127.0.0.1:$port/app.js' | grep -qi \"^content-security-policy: default-src 'self'\""
for bad in '/../../etc/passwd' '/%2e%2e/%2e%2e/etc/passwd' '/.hidden' '/app.js/..' '/nothing.html'; do
	code=$(curl -sk --path-as-is -o /dev/null -w '%{http_code}' "https://127.0.0.1:$port$bad")
	check "a bad UI path $bad is a 404" test "$code" = 404
done
mkdir -p "$TOP/build/web-screenshots"
URL=https://127.0.0.1:$port ADMIN=$AD READONLY=$RO PASSWORD=$PASSWORD VM_NAME=webvm COPY_NAME=webcopy \
	ISO=$VELA_HOME/installer.iso SHOTS=$TOP/build/web-screenshots \
	timeout 600 node "$TOP/tests/web/ui.mjs" > "$VELA_HOME/ui.out" 2>&1
cd "$TOP" || exit 1
grep -E '^(PASS|FAIL): ' "$VELA_HOME/ui.out"
if ! grep -q 'all browser checks passed' "$VELA_HOME/ui.out"; then
	fail "the browser run ended early"
	tail -5 "$VELA_HOME/ui.out"
	# What velad saw, for a failure seen only in a CI log.
	"$VELA" event list --limit 40 2>&1 | sed 's/^/  velad: /'
fi
check "screenshots were saved" test -s "$TOP/build/web-screenshots/console.png"
check "the ISO uploaded through the page is whole" cmp "$VELA_HOME/installer.iso" "$VELA_HOME/datastores/local/installer.iso"
kill -TERM "$velad_pid"
wait "$velad_pid"
check "velad exits 0" test $? = 0
velad_pid=
check_sanitizers "$VELA_HOME/velad.out" velad-web-ui
finish
