#!/bin/bash
# Install the Debian packages Vela needs to build, run and test, if missing.
# Usage: scripts/install-deps.sh [build|run|test]   (default: test = everything)
set -euo pipefail
what=${1:-test}
build_pkgs="meson ninja-build pkg-config gcc libc6-dev libjansson-dev zlib1g-dev libsqlite3-dev libmicrohttpd-dev libgnutls28-dev nettle-dev libpam0g-dev libcurl4-gnutls-dev libxxhash-dev libfuse3-dev"
run_pkgs="qemu-system-x86 qemu-utils busybox-static cpio kmod nodejs fuse3"
test_pkgs="libcmocka-dev e2fsprogs fdisk clang libclang-rt-14-dev libnbd-bin curl jq util-linux passwd iproute2 sqlite3 node-ws chromium"
case $what in
	build) pkgs="$build_pkgs" ;;
	run) pkgs="$build_pkgs $run_pkgs" ;;
	test) pkgs="$build_pkgs $run_pkgs $test_pkgs" ;;
	*) echo "usage: $0 [build|run|test]" >&2; exit 2 ;;
esac
# velad's PAM service (logins to the API); needs root like the packages.
pam_file=$(cd "$(dirname "$0")/.." && pwd)/data/pam.d/vela
if [ "$what" != build ] && ! cmp -s "$pam_file" /etc/pam.d/vela; then
	if [ "$(id -u)" = 0 ]; then
		install -m 0644 "$pam_file" /etc/pam.d/vela
	else
		echo "install-deps: /etc/pam.d/vela is missing or old (run as root to install it)" >&2
	fi
fi
# npm comes with nodejs from some repositories, and as Debian's own package
# otherwise; the UI is built with it (make web).
[ "$what" != build ] && ! command -v npm >/dev/null && pkgs="$pkgs npm"
missing=()
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
	echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
	exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
