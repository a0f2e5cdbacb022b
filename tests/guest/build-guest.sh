#!/bin/bash
# Build Vela's test guest into OUT (default build/guest):
#   vmlinuz     Debian's cloud kernel (no install: apt-get download + dpkg-deb -x)
#   initrd.img  busybox-static + virtio/SCSI/ATA/input modules + tests/guest/init
#               + vela-io (a small static I/O load generator)
#               + vela-guestd (the guest agent, static, from GUESTD) and its settings
# Usage: build-guest.sh [OUT] [GUESTD]
# Cached: rebuilt only when this script, init or the agent changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/../../build/guest}
mkdir -p "$out"
out=$(cd "$out" && pwd)
guestd=${2:-$here/../../build/meson/src/guest/vela-guestd}
[ -x "$guestd" ] || { echo "build-guest: $guestd missing (build first)" >&2; exit 1; }
guestd=$(cd "$(dirname "$guestd")" && pwd)/$(basename "$guestd")
stamp="$out/.stamp"
want=$(cat "$here/build-guest.sh" "$here/init" "$here/vela-io.c" "$here/vela-guestd.conf" "$guestd" | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initrd.img" ]; then
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# linux-image-cloud-amd64 is a metapackage: find the real image package.
resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
pkg=$(resolve)
if [ -z "$pkg" ] || ! apt-get download "$pkg" >/dev/null 2>&1; then
	# Package lists missing or stale (a fresh machine): refresh once and retry.
	apt-get update -qq >/dev/null 2>&1 || true
	pkg=$(resolve)
	[ -n "$pkg" ] || { echo "build-guest: cannot resolve linux-image-cloud-amd64" >&2; exit 1; }
	apt-get download "$pkg" >/dev/null 2>&1 || { echo "build-guest: apt-get download $pkg failed" >&2; exit 1; }
fi
dpkg-deb -x ./*.deb kroot
kver=$(ls kroot/lib/modules | head -n1)
depmod -b kroot "$kver"

root=$work/initramfs
mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,tmp,run,lib/modules}
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
	[ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done
install -m 0755 "$here/init" "$root/init"
# The guest's I/O load generator (no fio in busybox), static: no libraries in the initramfs.
gcc -O2 -static -pthread -o "$root/bin/vela-io" "$here/vela-io.c"
install -m 0755 "$guestd" "$root/bin/vela-guestd"
strip "$root/bin/vela-guestd"
install -m 0644 "$here/vela-guestd.conf" "$root/etc/vela-guestd.conf"

# Modules and their dependencies, in load order (modprobe resolves it).
mods="virtio_pci virtio_blk virtio_scsi virtio_net virtio_console virtio_balloon virtio_rng
      sd_mod sr_mod vmw_pvscsi ata_piix ata_generic isofs evdev button ext4"
: > "$root/etc/modules.list"
for m in $mods; do
	modprobe -S "$kver" -d "$work/kroot" --show-depends "$m" 2>/dev/null | awk '$1 == "insmod" {print $2}' |
	while read -r f; do
		rel=${f#"$work/kroot/lib/modules/$kver/"}
		grep -qxF "$rel" "$root/etc/modules.list" && continue
		mkdir -p "$root/lib/modules/$(dirname "$rel")"
		cp "$f" "$root/lib/modules/$rel"
		echo "$rel" >> "$root/etc/modules.list"
	done || { echo "build-guest: module $m not found in kernel $kver" >&2; exit 1; }
done

(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -9) > "$out/initrd.img"
cp kroot/boot/vmlinuz-* "$out/vmlinuz"
echo "$kver" > "$out/kernel-version"
echo "$want" > "$stamp"
echo "build-guest: $out (kernel $kver, $(wc -l < "$root/etc/modules.list") modules)"
