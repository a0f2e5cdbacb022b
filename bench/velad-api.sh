#!/bin/bash
# velad's inventory API vs libvirt (libvirtd + its C API), same machine, same run.
#   1. N VMs defined (default 1000), RUNNING of them powered on (default 20):
#      identical small guests in both, 64 MiB, TCG, no disk (SeaBIOS idles).
#   2. "List every VM with its power state", THREADS clients in a loop for
#      SECS seconds: velad GET /api/v1/vms on its socket vs libvirt
#      virConnectListAllDomains + virDomainGetName + virDomainGetState
#      (what `virsh list --all` does).  Requests/s, p50, p99.
#      Also velad over HTTPS as a user with a readonly grant on the host:
#      that list is filtered per request, so it is never served from cache.
#   3. Power-on latency, CLI to QEMU running, median of 5: `vela vm start ID`
#      (through velad) vs `virsh start NAME`.
# Usage: [N=1000] [RUNNING=20] [THREADS=4] [SECS=10] bench/velad-api.sh
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
N=${N:-1000} RUNNING=${RUNNING:-20} THREADS=${THREADS:-4} SECS=${SECS:-10}
work=$(mktemp -d /var/tmp/vela-bench-api.XXXXXX)
export VELA_HOME=$work/home
vela=$top/build/bin/vela
virsh="virsh -q -c qemu:///system"
velad_pid=

cleanup() {
	set +e
	for ((i = 1; i <= N; i++)); do echo "destroy vb-$i"; echo "undefine vb-$i"; done | $virsh >/dev/null 2>&1
	for p in "$VELA_HOME"/run/vm/*/pid; do [ -f "$p" ] && kill -TERM "$(cat "$p")" 2>/dev/null; done
	sleep 1
	for p in "$VELA_HOME"/run/vm/*/pid; do [ -f "$p" ] && kill -KILL "$(cat "$p")" 2>/dev/null; done
	[ -n "$velad_pid" ] && kill "$velad_pid" 2>/dev/null
	rm -rf "$work"
}
trap cleanup EXIT
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
ms() { date +%s%N; }


# ---- libvirt, started as PEERS.md says when it is not running, with two
# changes this machine needs:
# - under a subreaper (tini -s): libvirt double-forks QEMU, and where PID 1
#   does not reap orphans (containers) it waits forever on its capability
#   probe's zombie;
# - with /dev/kvm hidden (a private mount namespace): this machine's
#   /dev/kvm cannot run guests, and while it exists libvirt re-probes QEMU's
#   capabilities on every define (~8 s each).  Both peers run TCG anyway.
LIBVIRT_EXTRA="libvirt-dev libcurl4-gnutls-dev"
. "$top/bench/libvirt.sh"
libvirt_up

gcc -O2 -Wall -o "$work/apiload" "$top/bench/apiload.c" -lcurl -lvirt -lpthread

# ---- the same N guests in both
mkdir -p "$VELA_HOME"
port=$((20000 + RANDOM % 40000))
"$top/build/bin/velad" --foreground --https-port $port --http-port 0 --listen 127.0.0.1 > "$work/velad.out" 2>&1 &
velad_pid=$!
for ((i = 0; i < 50; i++)); do "$vela" host info >/dev/null 2>&1 && break; sleep 0.1; done
ds=$VELA_HOME/datastores/local
for ((i = 1; i <= N; i++)); do
	mkdir -p "$ds/vb-$i"
	printf 'config.version = "8"\nvirtualHW.version = "4"\ndisplayName = "vb-%d"\nmemsize = "64"\nguestOS = "other"\nengine.accel = "tcg"\n' \
		"$i" > "$ds/vb-$i/vb-$i.vmx"
	cat > "$work/vb-$i.xml" <<XML
<domain type='qemu'><name>vb-$i</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices></domain>
XML
done
t=$(ms)
for ((i = 1; i <= N; i++)); do
	curl -s --unix-socket "$VELA_HOME/run/velad.sock" -X POST --data-binary "{\"config\": \"$ds/vb-$i/vb-$i.vmx\"}" \
		http://velad/api/v1/vms >/dev/null
done
reg_ms=$(( ($(ms) - t) / 1000000 ))
t=$(ms)
for ((i = 1; i <= N; i++)); do echo "define $work/vb-$i.xml"; done | $virsh >/dev/null
def_ms=$(( ($(ms) - t) / 1000000 ))
for ((i = 1; i <= RUNNING; i++)); do
	"$vela" vm start "$i" >/dev/null
	$virsh start "vb-$i" >/dev/null
done
echo "registered $N VMs in velad in $reg_ms ms (one curl each); defined them in libvirt in $def_ms ms (one virsh session)"
echo "running: velad $("$vela" --json vm list | grep -c '"state": "on"'), libvirt $($virsh list --state-running | grep -c vb-)"

# ---- list every VM with its state
benchuser=velabench$$
useradd -M "$benchuser"
trap 'userdel "$benchuser" 2>/dev/null; cleanup' EXIT
pw=bench-$RANDOM-$RANDOM
echo "$benchuser:$pw" | chpasswd
"$vela" perm grant "user:$benchuser" host readonly >/dev/null
token=$(VELA_PASSWORD=$pw "$vela" --host 127.0.0.1:$port --insecure --user "$benchuser" token create bench)
v=$("$work/apiload" velad "$VELA_HOME/run/velad.sock" "$THREADS" "$SECS")
f=$(VELA_TOKEN=$token "$work/apiload" velad-https "https://127.0.0.1:$port" "$THREADS" "$SECS")
l=$("$work/apiload" libvirt qemu:///system "$THREADS" "$SECS")
echo "$v"
echo "$f"
echo "$l"
get() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
printf '%-8s %10s %10s %10s %6s\n' peer "req/s" p50_ms p99_ms vms
printf '%-8s %10s %10s %10s %6s\n' velad "$(get "$v" rps)" "$(get "$v" p50_ms)" "$(get "$v" p99_ms)" "$(get "$v" vms)"
printf '%-8s %10s %10s %10s %6s\n' "velad-ro" "$(get "$f" rps)" "$(get "$f" p50_ms)" "$(get "$f" p99_ms)" "$(get "$f" vms)"
printf '%-8s %10s %10s %10s %6s\n' libvirt "$(get "$l" rps)" "$(get "$l" p50_ms)" "$(get "$l" p99_ms)" "$(get "$l" vms)"
awk -v a="$(get "$v" rps)" -v b="$(get "$l" rps)" 'BEGIN {printf "throughput ratio velad/libvirt: %.2fx\n", a / b}'
awk -v a="$(get "$f" rps)" -v b="$(get "$l" rps)" 'BEGIN {printf "throughput ratio velad (HTTPS, filtered)/libvirt: %.2fx\n", a / b}'

# ---- power-on latency (CLI call until the guest's QEMU runs)
vt=() lt=()
for ((k = 0; k < 5; k++)); do
	i=$((RUNNING + 1 + k))
	t=$(ms); "$vela" vm start "$i" >/dev/null; vt+=($(( ($(ms) - t) / 1000000 )))
	t=$(ms); $virsh start "vb-$i" >/dev/null; lt+=($(( ($(ms) - t) / 1000000 )))
done
vm_=$(printf '%s\n' "${vt[@]}" | median); lm=$(printf '%s\n' "${lt[@]}" | median)
echo "power-on ms (median of 5): vela vm start $vm_ (${vt[*]}), virsh start $lm (${lt[*]})"
awk -v a="$vm_" -v b="$lm" 'BEGIN {printf "power-on ratio vela/virsh: %.2fx (lower is better)\n", a / b}'
