# bench/libvirt.sh - sourced by the benchmarks that compare with libvirt:
# installs it (with the extra packages named in $LIBVIRT_EXTRA) and starts
# libvirtd unless one answers.  Needs $virsh.
#
# libvirtd runs:
# - under tini: without systemd nobody reaps its capability probe's zombie
#   and it waits for it forever;
# - with /dev/kvm hidden (a private mount namespace): this machine's
#   /dev/kvm cannot run guests, and while it exists libvirt re-probes QEMU's
#   capabilities on every define (~8 s each).  Both peers run TCG anyway.
libvirt_up() {
	local need=() p i
	for p in libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients tini ${LIBVIRT_EXTRA:-}; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
	done
	[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	$virsh version >/dev/null 2>&1 && return 0
	getent group kvm >/dev/null || groupadd -r kvm
	getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
	id libvirt-qemu >/dev/null 2>&1 || useradd -r -g libvirt-qemu -G kvm libvirt-qemu
	mkdir -p /var/log/libvirt
	pgrep -x virtlogd >/dev/null || virtlogd -d
	setsid unshare -m sh -c 'mount --bind /dev/null /dev/kvm; exec tini -s -- libvirtd' > /dev/null 2>&1 < /dev/null &
	for ((i = 0; i < 100; i++)); do $virsh version >/dev/null 2>&1 && return 0; sleep 0.2; done
	echo "libvirtd did not start" >&2
	return 1
}
