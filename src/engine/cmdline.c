/* cmdline.c - build QEMU's argv from the VM model. */
#include "common.h"
#include "engine.h"

#include <fcntl.h>
#include <string.h>

struct argv_builder {
	char **v;
	size_t n, cap;
};

static void push(struct argv_builder *a, char *owned)
{
	if (a->n + 2 > a->cap) {
		a->cap = a->cap ? a->cap * 2 : 64;
		a->v = xrealloc(a->v, a->cap * sizeof *a->v);
	}
	a->v[a->n++] = owned;
	a->v[a->n] = NULL;
}

__attribute__((format(printf, 3, 4)))
static void opt(struct argv_builder *a, const char *flag, const char *fmt, ...)
{
	char *val;
	va_list ap;
	va_start(ap, fmt);
	if (vasprintf(&val, fmt, ap) < 0)
		abort();
	va_end(ap);
	push(a, xstrdup(flag));
	push(a, val);
}

/* QEMU option values escape a comma by doubling it. */
static char *qesc(const char *s)
{
	struct strbuf sb = { 0 };
	for (const char *p = s; *p; p++) {
		if (*p == ',')
			strbuf_puts(&sb, ",,");
		else
			strbuf_append(&sb, p, 1);
	}
	return strbuf_steal(&sb);
}

void engine_argv_free(char **argv)
{
	if (!argv)
		return;
	for (char **p = argv; *p; p++)
		free(*p);
	free(argv);
}

char *engine_argv_to_string(char *const *argv)
{
	struct strbuf sb = { 0 };
	for (char *const *p = argv; *p; p++) {
		if (p != argv)
			strbuf_puts(&sb, " ");
		if (strpbrk(*p, " \t\"'\\$`;&|<>()*?[]#~") || !**p) {
			strbuf_puts(&sb, "'");
			for (const char *c = *p; *c; c++) {
				if (*c == '\'')
					strbuf_puts(&sb, "'\\''");
				else
					strbuf_append(&sb, c, 1);
			}
			strbuf_puts(&sb, "'");
		} else {
			strbuf_puts(&sb, *p);
		}
	}
	return strbuf_steal(&sb);
}

int engine_probe_format(const char *path, const char **format)
{
	unsigned char buf[512];
	CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return vela_error_errno(errno, "open disk %s", path);
	ssize_t n = pread(fd, buf, sizeof buf, 0);
	if (n < 0)
		return vela_error_errno(errno, "read disk %s", path);
	*format = "raw";
	if (n >= 4 && memcmp(buf, "KDMV", 4) == 0)
		*format = "vmdk";
	else if (n >= 21 && memcmp(buf, "# Disk DescriptorFile", 21) == 0)
		*format = "vmdk";
	else if (n >= 4 && memcmp(buf, "QFI\xfb", 4) == 0)
		*format = "qcow2";
	else if (n >= 8 && memcmp(buf, "conectix", 8) == 0)
		*format = "vpc";   /* dynamic VHD: footer copy at offset 0 */
	else {
		/* Fixed VHD: the footer is the last 512 bytes. */
		off_t end = lseek(fd, 0, SEEK_END);
		if (end >= 512 && pread(fd, buf, 512, end - 512) == 512 && memcmp(buf, "conectix", 8) == 0)
			*format = "vpc";
	}
	return 0;
}

static const char *nic_device(enum vmx_nic_dev d)
{
	switch (d) {
	case VMX_NIC_VIRTIO: return "virtio-net-pci";
	case VMX_NIC_E1000: return "e1000";
	case VMX_NIC_E1000E: return "e1000e";
	case VMX_NIC_VMXNET3: return "vmxnet3";
	case VMX_NIC_PCNET: return "pcnet";
	}
	return "virtio-net-pci";
}

/* Highest SCSI target id each emulated HBA accepts (exclusive). */
static unsigned scsi_max_targets(enum vmx_scsi_dev d)
{
	switch (d) {
	case VMX_SCSI_LSILOGIC:
	case VMX_SCSI_BUSLOGIC:
		return 7;    /* lsi53c895a */
	case VMX_SCSI_LSISAS1068:
		return 8;
	default:
		return 16;
	}
}

static void add_scsi_controllers(struct argv_builder *a, const struct vmx_model *m, struct strbuf *notes)
{
	for (unsigned i = 0; i < VMX_MAX_SCSI_CTRL; i++) {
		if (!m->scsi[i].present)
			continue;
		const char *dev = "virtio-scsi-pci";
		switch (m->scsi[i].dev) {
		case VMX_SCSI_VIRTIO: dev = "virtio-scsi-pci"; break;
		case VMX_SCSI_PVSCSI: dev = "pvscsi"; break;
		case VMX_SCSI_LSISAS1068: dev = "mptsas1068"; break;
		case VMX_SCSI_LSILOGIC:
			dev = "lsi53c895a";
			strbuf_printf(notes, "scsi%u: lsilogic (LSI53C1030) is emulated as QEMU's lsi53c895a; "
				      "the guest needs a sym53c8xx driver\n", i);
			break;
		case VMX_SCSI_BUSLOGIC:
			dev = "lsi53c895a";
			strbuf_printf(notes, "scsi%u: QEMU has no BusLogic emulation; using lsi53c895a\n", i);
			break;
		}
		opt(a, "-device", "%s,id=scsi%u", dev, i);
	}
	for (unsigned i = 0; i < VMX_MAX_SATA_CTRL; i++)
		if (m->sata[i].present)
			opt(a, "-device", "ahci,id=sata%u", i);
}

static int add_disk(struct argv_builder *a, const struct vmx_model *m, const struct vmx_disk *d,
		    int bootindex, const char *served, struct strbuf *notes)
{
	char id[32];
	bool cdrom = d->type != VMX_DEV_DISK;
	snprintf(id, sizeof id, "%s%u-%u", vmx_bus_name(d->bus), d->ctrl, d->unit);

	char boot[32] = "";
	if (bootindex > 0)
		snprintf(boot, sizeof boot, ",bootindex=%d", bootindex);
	if (served && !cdrom && d->bus == VMX_BUS_VIRTIO) {
		/* Vela's engine in the supervisor serves it, straight from guest RAM. */
		CLEANUP_FREE char *p = qesc(served);
		opt(a, "-chardev", "socket,id=vhost-%s,path=%s", id, p);
		opt(a, "-device", "vhost-user-blk-pci,chardev=vhost-%s,id=%s,num-queues=%u%s", id, id,
		    m->vcpus < 16 ? m->vcpus : 16, boot);
		return 0;
	}

	struct strbuf drive = { 0 };
	strbuf_printf(&drive, "if=none,id=drive-%s", id);
	if (served && !cdrom) {
		/* The emulated controller stays; its data comes from Vela's engine. */
		CLEANUP_FREE char *p = qesc(served);
		strbuf_printf(&drive, ",driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=%s,"
			      "file.export=%s,discard=unmap", p, id);
	} else if (cdrom) {
		strbuf_puts(&drive, ",media=cdrom,readonly=on");
		if (d->path && d->start_connected) {
			CLEANUP_FREE char *p = qesc(d->path);
			strbuf_printf(&drive, ",format=raw,file=%s", p);
		}
	} else {
		const char *fmt;
		int r = engine_probe_format(d->path, &fmt);
		if (r < 0) {
			strbuf_free(&drive);
			return vela_error_context(r, "%s", d->addr);
		}
		switch (d->mode) {
		case VMX_MODE_PERSISTENT:
		case VMX_MODE_INDEPENDENT_PERSISTENT:
			break;
		case VMX_MODE_NONPERSISTENT:
		case VMX_MODE_INDEPENDENT_NONPERSISTENT:
			/* Writes go to a temporary overlay discarded at power-off. */
			strbuf_puts(&drive, ",snapshot=on");
			break;
		case VMX_MODE_UNDOABLE:
		case VMX_MODE_APPEND:
			strbuf_free(&drive);
			return vela_error(VELA_E_NOTSUP, "%s: disk mode %s needs redo logs in Vela's disk engine, "
					  "which this version does not have yet", d->addr, vmx_disk_mode_name(d->mode));
		}
		CLEANUP_FREE char *p = qesc(d->path);
		strbuf_printf(&drive, ",format=%s,file=%s,cache=writeback,discard=unmap", fmt, p);
	}
	push(a, xstrdup("-drive"));
	push(a, strbuf_steal(&drive));

	switch (d->bus) {
	case VMX_BUS_SCSI: {
		enum vmx_scsi_dev hba = m->scsi[d->ctrl].dev;
		if (d->unit >= scsi_max_targets(hba))
			return vela_error(VELA_E_CONFIG, "%s: the emulated %s controller has SCSI ids 0..%u only",
					  d->addr, vmx_scsi_dev_name(hba), scsi_max_targets(hba) - 1);
		if (hba == VMX_SCSI_VIRTIO || hba == VMX_SCSI_PVSCSI)
			opt(a, "-device", "%s,bus=scsi%u.0,channel=0,scsi-id=%u,lun=0,drive=drive-%s,id=%s%s",
			    cdrom ? "scsi-cd" : "scsi-hd", d->ctrl, d->unit, id, id, boot);
		else
			opt(a, "-device", "%s,bus=scsi%u.0,scsi-id=%u,drive=drive-%s,id=%s%s",
			    cdrom ? "scsi-cd" : "scsi-hd", d->ctrl, d->unit, id, id, boot);
		break;
	}
	case VMX_BUS_IDE:
		if (m->chipset == VMX_CHIPSET_Q35) {
			/* q35 has no parallel IDE: its AHCI ports 0-3 stand in for ide0:0..ide1:1. */
			opt(a, "-device", "%s,bus=ide.%u,drive=drive-%s,id=%s%s",
			    cdrom ? "ide-cd" : "ide-hd", d->ctrl * 2 + d->unit, id, id, boot);
			strbuf_printf(notes, "%s: q35 has no IDE controller; attached to an AHCI (SATA) port\n", d->addr);
		} else {
			opt(a, "-device", "%s,bus=ide.%u,unit=%u,drive=drive-%s,id=%s%s",
			    cdrom ? "ide-cd" : "ide-hd", d->ctrl, d->unit, id, id, boot);
		}
		break;
	case VMX_BUS_SATA:
		opt(a, "-device", "%s,bus=sata%u.%u,drive=drive-%s,id=%s%s",
		    cdrom ? "ide-cd" : "ide-hd", d->ctrl, d->unit, id, id, boot);
		break;
	case VMX_BUS_VIRTIO:
		opt(a, "-device", "virtio-blk-pci,drive=drive-%s,id=%s%s", id, id, boot);
		break;
	}
	return 0;
}

static void add_serials(struct argv_builder *a, const struct vmx_model *m, const struct engine_runtime *rt,
			struct strbuf *notes)
{
	for (unsigned i = 0; i < VMX_MAX_SERIAL; i++) {
		const struct vmx_serial *s = &m->serials[i];
		if (!s->present)
			continue;
		CLEANUP_FREE char *p = s->path ? qesc(s->path) : NULL;
		enum vmx_serial_type t = s->start_connected ? s->type : VMX_SERIAL_NONE;
		switch (t) {
		case VMX_SERIAL_NONE:
			opt(a, "-chardev", "null,id=serial%u", i);
			break;
		case VMX_SERIAL_FILE:
			opt(a, "-chardev", "file,id=serial%u,path=%s,append=on", i, p);
			break;
		case VMX_SERIAL_PIPE:
			if (s->pipe_server)
				opt(a, "-chardev", "socket,id=serial%u,path=%s,server=on,wait=off", i, p);
			else
				opt(a, "-chardev", "socket,id=serial%u,path=%s,reconnect=1", i, p);
			break;
		case VMX_SERIAL_CONSOLE:
			if (rt->console_fd >= 0) {
				opt(a, "-chardev", "socket,id=serial%u,fd=%d", i, rt->console_fd);
			} else {
				opt(a, "-chardev", "null,id=serial%u", i);
				strbuf_printf(notes, "serial%u: no console socket; output discarded\n", i);
			}
			break;
		case VMX_SERIAL_DEVICE:
			opt(a, "-chardev", "serial,id=serial%u,path=%s", i, p);
			break;
		}
		opt(a, "-device", "isa-serial,chardev=serial%u,index=%u,id=com%u", i, i, i + 1);
	}
}

int engine_build_argv(const struct vmx_model *m, const struct engine_runtime *rt,
		      char ***argv_out, struct strbuf *notes)
{
	struct argv_builder a = { 0 };
	struct strbuf scratch = { 0 };
	int r = 0;
	if (!notes)
		notes = &scratch;

	push(&a, xstrdup(rt->qemu_binary ? rt->qemu_binary : "qemu-system-x86_64"));
	{
		CLEANUP_FREE char *name = qesc(rt->name ? rt->name : m->display_name);
		opt(&a, "-name", "guest=%s,debug-threads=on", name);
	}
	push(&a, xstrdup("-nodefaults"));
	push(&a, xstrdup("-no-user-config"));
	/* Start paused: the supervisor connects QMP before the first instruction. */
	push(&a, xstrdup("-S"));
	/* Guest power-off stops the VM instead of exiting QEMU, so a soft reset
	 * (power button, clean shutdown, reset) can continue the same process. */
	push(&a, xstrdup("-no-shutdown"));
	bool shared_ram = false;
	for (size_t i = 0; rt->disk_sockets && i < m->n_disks; i++)
		if (rt->disk_sockets[i] && m->disks[i].bus == VMX_BUS_VIRTIO && m->disks[i].type == VMX_DEV_DISK)
			shared_ram = true;
	if (shared_ram) {
		opt(&a, "-object", "memory-backend-memfd,id=ram0,size=%lluM,share=on",
		    (unsigned long long)m->memsize_mb);
		opt(&a, "-machine", "%s,memory-backend=ram0", m->chipset == VMX_CHIPSET_Q35 ? "q35" : "pc");
	} else {
		opt(&a, "-machine", "%s", m->chipset == VMX_CHIPSET_Q35 ? "q35" : "pc");
	}
	opt(&a, "-accel", "%s", rt->accel == ENGINE_ACCEL_KVM ? "kvm" : "tcg");
	if (rt->accel == ENGINE_ACCEL_KVM)
		opt(&a, "-cpu", "host");
	opt(&a, "-m", "%llu", (unsigned long long)m->memsize_mb);
	opt(&a, "-smp", "%u", m->vcpus);
	if (m->has_uuid_bios) {
		char u[40];
		vmx_uuid_format_canonical(m->uuid_bios, u, sizeof u);
		opt(&a, "-uuid", "%s", u);
	}
	opt(&a, "-rtc", "base=utc");
	opt(&a, "-chardev", "socket,id=qmp,fd=%d", rt->qmp_fd);
	opt(&a, "-mon", "chardev=qmp,mode=control");

	if (rt->agent_fd > 0) {
		opt(&a, "-device", "virtio-serial-pci,id=vela-vser");
		opt(&a, "-chardev", "socket,id=vela-agent,fd=%d", rt->agent_fd);
		opt(&a, "-device", "virtserialport,bus=vela-vser.0,chardev=vela-agent,name=%s", "org.vela.guestd.0");
	}
	if (rt->incoming && rt->incoming_fd > 0)
		opt(&a, "-incoming", "fd:%d", rt->incoming_fd);
	else if (rt->incoming)
		opt(&a, "-incoming", "defer");

	opt(&a, "-device", "VGA,id=video0");
	if (rt->vnc_socket) {
		CLEANUP_FREE char *p = qesc(rt->vnc_socket);
		opt(&a, "-vnc", "unix:%s", p);
	} else {
		opt(&a, "-display", "none");
	}

	bool direct_boot = m->boot.kernel != NULL;
	if (direct_boot) {
		opt(&a, "-kernel", "%s", m->boot.kernel);
		if (m->boot.initrd)
			opt(&a, "-initrd", "%s", m->boot.initrd);
		if (m->boot.cmdline)
			opt(&a, "-append", "%s", m->boot.cmdline);
	}
	if (m->boot.menu)
		opt(&a, "-boot", "menu=on");

	/* Boot order becomes bootindex on devices, in the order of boot.order. */
	int next_boot = 1;
	int disk_boot[VMX_MAX_SCSI_CTRL * VMX_MAX_SCSI_UNIT + 64] = { 0 };
	int nic_boot[VMX_MAX_NICS] = { 0 };
	int floppy_boot = 0;
	for (const char *o = m->boot.order; !direct_boot && *o; o++) {
		for (size_t i = 0; i < m->n_disks && i < ARRAY_SIZE(disk_boot); i++) {
			bool is_cd = m->disks[i].type != VMX_DEV_DISK;
			if ((*o == 'd' && !is_cd) || (*o == 'c' && is_cd))
				disk_boot[i] = next_boot++;
		}
		if (*o == 'f' && m->floppy.present)
			floppy_boot = next_boot++;
		for (unsigned i = 0; *o == 'n' && i < VMX_MAX_NICS; i++)
			if (m->nics[i].present)
				nic_boot[i] = next_boot++;
	}

	add_scsi_controllers(&a, m, notes);
	for (size_t i = 0; i < m->n_disks; i++) {
		r = add_disk(&a, m, &m->disks[i], i < ARRAY_SIZE(disk_boot) ? disk_boot[i] : 0,
			     rt->disk_sockets ? rt->disk_sockets[i] : NULL, notes);
		if (r < 0)
			goto err;
	}

	if (m->floppy.present) {
		opt(&a, "-device", "isa-fdc,id=fdc0");
		if (m->floppy.path && m->floppy.start_connected) {
			CLEANUP_FREE char *p = qesc(m->floppy.path);
			opt(&a, "-drive", "if=none,id=drive-floppy0,format=raw,file=%s", p);
		} else {
			opt(&a, "-drive", "if=none,id=drive-floppy0");
		}
		if (floppy_boot)
			opt(&a, "-device", "floppy,unit=0,drive=drive-floppy0,id=floppy0,bootindex=%d", floppy_boot);
		else
			opt(&a, "-device", "floppy,unit=0,drive=drive-floppy0,id=floppy0");
	}

	for (unsigned i = 0; i < VMX_MAX_NICS; i++) {
		const struct vmx_nic *n = &m->nics[i];
		if (!n->present)
			continue;
		if (!n->mac[0]) {
			r = vela_error(VELA_E_INTERNAL, "ethernet%u: no MAC address (identity not written yet)", i);
			goto err;
		}
		/* Virtual switches come with the networking subsystem; until then every
		 * NIC sits on its own isolated user-mode network that reaches nothing. */
		opt(&a, "-netdev", "user,id=net%u,restrict=on", i);
		char boot[32] = "";
		if (nic_boot[i])
			snprintf(boot, sizeof boot, ",bootindex=%d", nic_boot[i]);
		opt(&a, "-device", "%s,netdev=net%u,mac=%s,id=ethernet%u%s", nic_device(n->dev), i, n->mac, i, boot);
		strbuf_printf(notes, "ethernet%u: connection \"%s\" is not switched yet; NIC is on an isolated network\n",
			      i, n->connection_type);
	}

	add_serials(&a, m, rt, notes);

	strbuf_free(&scratch);
	*argv_out = a.v;
	return 0;
err:
	strbuf_free(&scratch);
	engine_argv_free(a.v);
	return r;
}

int engine_machine_fingerprint(const struct vmx_model *m, enum engine_accel accel, json_t **out)
{
	/* The runtime parts take fixed stand-ins: only what the guest sees
	 * (and what QEMU's saved state depends on) remains different. */
	char **socks = xcalloc(m->n_disks + 1, sizeof(char *));
	for (size_t i = 0; i < m->n_disks; i++)
		if (m->disks[i].type == VMX_DEV_DISK && m->disks[i].path)
			socks[i] = "disk.sock";
	struct engine_runtime rt = { .qemu_binary = "qemu", .accel = accel, .qmp_fd = 3, .console_fd = 4,
				     .agent_fd = 5, .vnc_socket = "vnc.sock", .name = "vm", .disk_sockets = socks };
	char **argv = NULL;
	int r = engine_build_argv(m, &rt, &argv, NULL);
	free(socks);
	if (r < 0)
		return r;
	json_t *arr = json_array();
	for (size_t i = 1; argv[i]; i++) {
		if (strcmp(argv[i], "-name") == 0 && argv[i + 1]) {
			i++;
			continue;
		}
		json_array_append_new(arr, json_string(argv[i]));
	}
	engine_argv_free(argv);
	*out = arr;
	return 0;
}
