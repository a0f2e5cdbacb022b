/* vmx_model.c - build and validate the typed VM model from a vmx_file. */
#include "common.h"
#include "vmx.h"

#include <ctype.h>
#include <string.h>
#include <sys/stat.h>

/* Collects every problem; the first also becomes the thread-local error. */
struct checker {
	const struct vmx_file *f;
	const char *fname;
	struct strbuf *diag;
	unsigned problems;
	char first[1024];
	const struct vmx_model_opts *opts;
	struct vmx_model *m;
};

__attribute__((format(printf, 3, 4)))
static void problem(struct checker *c, const char *key, const char *fmt, ...)
{
	char msg[768], line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	unsigned ln = key ? vmx_get_line(c->f, key) : 0;
	if (key && ln)
		snprintf(line, sizeof line, "%s:%u: %s: %s", c->fname, ln, key, msg);
	else if (key)
		snprintf(line, sizeof line, "%s: %s: %s", c->fname, key, msg);
	else
		snprintf(line, sizeof line, "%s: %s", c->fname, msg);
	if (c->problems++ == 0)
		snprintf(c->first, sizeof c->first, "%s", line);
	if (c->diag)
		strbuf_printf(c->diag, "%s\n", line);
}

static const char *get(struct checker *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *get(struct checker *c, const char *fmt, ...)
{
	char key[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(key, sizeof key, fmt, ap);
	va_end(ap);
	return vmx_get(c->f, key);
}

/* Boolean key with default; a malformed value is a problem. */
static bool get_bool(struct checker *c, const char *key, bool def)
{
	const char *v = vmx_get(c->f, key);
	bool b;
	if (!v)
		return def;
	if (parse_bool(v, &b) < 0) {
		problem(c, key, "expected a boolean (TRUE or FALSE), got \"%s\"", v);
		return def;
	}
	return b;
}

static uint64_t get_uint(struct checker *c, const char *key, uint64_t min, uint64_t max, uint64_t def)
{
	const char *v = vmx_get(c->f, key);
	uint64_t x;
	if (!v)
		return def;
	if (parse_u64(v, UINT64_MAX, &x) < 0 || x < min || x > max) {
		problem(c, key, "expected a whole number from %llu to %llu, got \"%s\"",
			(unsigned long long)min, (unsigned long long)max, v);
		return def;
	}
	return x;
}

/* Match value against names (case-insensitive); returns index or -1. */
static int get_enum(struct checker *c, const char *key, const char *const *names, size_t n, int def, const char *expected)
{
	const char *v = vmx_get(c->f, key);
	if (!v)
		return def;
	for (size_t i = 0; i < n; i++)
		if (names[i] && str_ieq(v, names[i]))
			return (int)i;
	problem(c, key, "expected %s, got \"%s\"", expected, v);
	return def;
}

static char *resolve(struct checker *c, const char *key, const char *value)
{
	char *out = NULL;
	if (vela_resolve_path(value, c->m->config_dir, &out) < 0) {
		problem(c, key, "%s", vela_errmsg());
		return NULL;
	}
	return out;
}

static void check_exists(struct checker *c, const char *key, const char *value, const char *path, const char *what)
{
	struct stat st;
	if (!c->opts->check_files || !path)
		return;
	if (stat(path, &st) < 0)
		problem(c, key, "%s \"%s\" does not exist (looked for %s)", what, value, path);
	else if (S_ISDIR(st.st_mode))
		problem(c, key, "%s \"%s\" is a folder, expected a file", what, value);
}

/* ------------------------------------------------------------ names */

static const char *const bus_names[] = { "ide", "scsi", "sata", "virtio" };
static const char *const mode_names[] = {
	"persistent", "nonpersistent", "undoable", "append",
	"independent-persistent", "independent-nonpersistent",
};
static const char *const scsi_names[] = { "lsilogic", "lsisas1068", "buslogic", "pvscsi", "virtio" };
static const char *const nic_names[] = { "virtio", "e1000", "e1000e", "vmxnet3", "pcnet" };
static const char *const accel_names[] = { "auto", "kvm", "tcg" };

const char *vmx_bus_name(enum vmx_bus b) { return bus_names[b]; }
const char *vmx_disk_mode_name(enum vmx_disk_mode m) { return mode_names[m]; }
const char *vmx_scsi_dev_name(enum vmx_scsi_dev d) { return scsi_names[d]; }
const char *vmx_nic_dev_name(enum vmx_nic_dev d) { return nic_names[d]; }
const char *vmx_accel_name(enum vmx_accel a) { return accel_names[a]; }

/* ---------------------------------------------- device index checks */

struct dev_ns {
	const char *prefix;
	unsigned max_ctrl;   /* controller index < max_ctrl */
	unsigned max_unit;   /* unit index < max_unit; 0 = no units */
	bool needs_unit;     /* key must be prefixN:M.x (virtio) */
};

static const struct dev_ns namespaces[] = {
	{ "scsi", VMX_MAX_SCSI_CTRL, VMX_MAX_SCSI_UNIT, false },
	{ "ide", VMX_MAX_IDE_CTRL, VMX_MAX_IDE_UNIT, false },
	{ "sata", VMX_MAX_SATA_CTRL, VMX_MAX_SATA_UNIT, false },
	{ "virtio", VMX_MAX_VIRTIO_GROUP, VMX_MAX_VIRTIO_UNIT, true },
	{ "ethernet", VMX_MAX_NICS, 0, false },
	{ "serial", VMX_MAX_SERIAL, 0, false },
	{ "floppy", 1, 0, false },
};

static bool read_index(const char **p, unsigned *out)
{
	const char *s = *p;
	unsigned v = 0;
	if (!isdigit((unsigned char)*s))
		return false;
	while (isdigit((unsigned char)*s)) {
		v = v * 10 + (unsigned)(*s - '0');
		if (v > 100000)
			return false;
		s++;
	}
	*p = s;
	*out = v;
	return true;
}

static void check_device_key(struct checker *c, const char *key)
{
	for (size_t i = 0; i < ARRAY_SIZE(namespaces); i++) {
		const struct dev_ns *ns = &namespaces[i];
		if (!str_istarts_with(key, ns->prefix))
			continue;
		const char *p = key + strlen(ns->prefix);
		unsigned ctrl, unit;
		if (!read_index(&p, &ctrl))
			continue;     /* e.g. "serialNumber": not a device key */
		bool has_unit = false;
		if (*p == ':') {
			p++;
			if (!read_index(&p, &unit) || ns->max_unit == 0) {
				problem(c, key, "malformed device address");
				return;
			}
			has_unit = true;
		}
		if (*p != '.')
			continue;
		if (ctrl >= ns->max_ctrl) {
			problem(c, key, "device index out of range: %s0..%s%u", ns->prefix, ns->prefix, ns->max_ctrl - 1);
			return;
		}
		if (has_unit && unit >= ns->max_unit) {
			problem(c, key, "unit out of range: %s%u:0..%s%u:%u", ns->prefix, ctrl, ns->prefix, ctrl, ns->max_unit - 1);
			return;
		}
		if (has_unit && i == 0 && unit == 7) {
			problem(c, key, "SCSI unit 7 is the controller's own address; use 0-6 or 8-15");
			return;
		}
		if (!has_unit && ns->needs_unit)
			problem(c, key, "expected a %sN:M address", ns->prefix);
		return;
	}
}

/* ------------------------------------------------------------ disks */

static void add_disk(struct checker *c, enum vmx_bus bus, unsigned ctrl, unsigned unit)
{
	char pfx[32], key[64];
	snprintf(pfx, sizeof pfx, "%s%u:%u", bus_names[bus], ctrl, unit);
	snprintf(key, sizeof key, "%s.present", pfx);
	if (!get_bool(c, key, false))
		return;

	struct vmx_model *m = c->m;
	if (bus == VMX_BUS_SCSI && !m->scsi[ctrl].present)
		problem(c, key, "device is present but its controller scsi%u is not (set scsi%u.present = \"TRUE\")", ctrl, ctrl);
	if (bus == VMX_BUS_SATA && !m->sata[ctrl].present)
		problem(c, key, "device is present but its controller sata%u is not (set sata%u.present = \"TRUE\")", ctrl, ctrl);

	m->disks = xrealloc(m->disks, (m->n_disks + 1) * sizeof *m->disks);
	struct vmx_disk *d = &m->disks[m->n_disks++];
	memset(d, 0, sizeof *d);
	d->bus = bus;
	d->ctrl = ctrl;
	d->unit = unit;
	snprintf(d->addr, sizeof d->addr, "%s", pfx);
	d->line = vmx_get_line(c->f, key);

	snprintf(key, sizeof key, "%s.deviceType", pfx);
	const char *dt = vmx_get(c->f, key);
	d->type = VMX_DEV_DISK;
	if (dt) {
		if (str_ieq(dt, "disk") || str_ieq(dt, "scsi-hardDisk") || str_ieq(dt, "ata-hardDisk") || str_ieq(dt, "plainDisk"))
			d->type = VMX_DEV_DISK;
		else if (str_ieq(dt, "cdrom-image"))
			d->type = VMX_DEV_CDROM_IMAGE;
		else if (str_ieq(dt, "atapi-cdrom") || str_ieq(dt, "cdrom-raw"))
			d->type = VMX_DEV_CDROM_RAW;
		else
			problem(c, key, "expected disk, cdrom-image, atapi-cdrom or cdrom-raw, got \"%s\"", dt);
	}
	if (bus == VMX_BUS_VIRTIO && d->type != VMX_DEV_DISK)
		problem(c, key, "virtio-blk devices can only be disks; put CD-ROMs on ide, sata or scsi");

	snprintf(key, sizeof key, "%s.mode", pfx);
	d->mode = (enum vmx_disk_mode)get_enum(c, key, mode_names, ARRAY_SIZE(mode_names), VMX_MODE_PERSISTENT,
		"persistent, nonpersistent, undoable, append, independent-persistent or independent-nonpersistent");
	snprintf(key, sizeof key, "%s.startConnected", pfx);
	d->start_connected = get_bool(c, key, true);

	snprintf(key, sizeof key, "%s.fileName", pfx);
	const char *fn = vmx_get(c->f, key);
	if (fn && vmx_get_line(c->f, key))
		d->line = vmx_get_line(c->f, key);
	if (d->type == VMX_DEV_DISK) {
		if (!fn || !*fn) {
			problem(c, key, "a disk needs a file name");
			return;
		}
	} else if (!fn || !*fn || str_ieq(fn, "auto detect")) {
		return;   /* empty CD-ROM drive */
	}
	d->file_name = xstrdup(fn);
	d->path = resolve(c, key, fn);
	if (d->type == VMX_DEV_DISK)
		check_exists(c, key, fn, d->path, "disk");
	else if (d->type == VMX_DEV_CDROM_IMAGE && d->start_connected)
		check_exists(c, key, fn, d->path, "CD-ROM image");

	/* Two devices must not write one file. */
	for (size_t i = 0; d->path && i + 1 < m->n_disks; i++) {
		struct vmx_disk *o = &m->disks[i];
		if (o->path && strcmp(o->path, d->path) == 0 && (o->type == VMX_DEV_DISK || d->type == VMX_DEV_DISK))
			problem(c, key, "\"%s\" is already attached as %s; a file can back only one device", fn, o->addr);
	}
}

static void build_storage(struct checker *c)
{
	struct vmx_model *m = c->m;
	for (unsigned i = 0; i < VMX_MAX_SCSI_CTRL; i++) {
		char key[64];
		snprintf(key, sizeof key, "scsi%u.present", i);
		m->scsi[i].present = get_bool(c, key, false);
		snprintf(key, sizeof key, "scsi%u.virtualDev", i);
		const char *v = vmx_get(c->f, key);
		m->scsi[i].dev = VMX_SCSI_VIRTIO;
		if (v && str_ieq(v, "virtio-scsi"))
			m->scsi[i].dev = VMX_SCSI_VIRTIO;
		else
			m->scsi[i].dev = (enum vmx_scsi_dev)get_enum(c, key, scsi_names, ARRAY_SIZE(scsi_names), VMX_SCSI_VIRTIO,
				"lsilogic, lsisas1068, buslogic, pvscsi or virtio");
	}
	for (unsigned i = 0; i < VMX_MAX_SATA_CTRL; i++) {
		char key[64];
		snprintf(key, sizeof key, "sata%u.present", i);
		m->sata[i].present = get_bool(c, key, false);
	}
	for (unsigned i = 0; i < VMX_MAX_SCSI_CTRL; i++)
		for (unsigned u = 0; u < VMX_MAX_SCSI_UNIT; u++)
			if (u != 7)
				add_disk(c, VMX_BUS_SCSI, i, u);
	for (unsigned i = 0; i < VMX_MAX_IDE_CTRL; i++)
		for (unsigned u = 0; u < VMX_MAX_IDE_UNIT; u++)
			add_disk(c, VMX_BUS_IDE, i, u);
	for (unsigned i = 0; i < VMX_MAX_SATA_CTRL; i++)
		for (unsigned u = 0; u < VMX_MAX_SATA_UNIT; u++)
			add_disk(c, VMX_BUS_SATA, i, u);
	for (unsigned i = 0; i < VMX_MAX_VIRTIO_GROUP; i++)
		for (unsigned u = 0; u < VMX_MAX_VIRTIO_UNIT; u++)
			add_disk(c, VMX_BUS_VIRTIO, i, u);

	m->floppy.present = get_bool(c, "floppy0.present", false);
	if (m->floppy.present) {
		m->floppy.start_connected = get_bool(c, "floppy0.startConnected", true);
		const char *ft = vmx_get(c->f, "floppy0.fileType");
		if (ft && !str_ieq(ft, "file") && !str_ieq(ft, "device"))
			problem(c, "floppy0.fileType", "expected file or device, got \"%s\"", ft);
		const char *fn = vmx_get(c->f, "floppy0.fileName");
		if (fn && *fn && !str_ieq(fn, "auto detect")) {
			m->floppy.path = resolve(c, "floppy0.fileName", fn);
			if (m->floppy.start_connected)
				check_exists(c, "floppy0.fileName", fn, m->floppy.path, "floppy image");
		}
	}
}

/* ------------------------------------------------------------- NICs */

static bool mac_well_formed(const char *s)
{
	if (strlen(s) != 17)
		return false;
	for (int i = 0; i < 17; i++) {
		if (i % 3 == 2 ? s[i] != ':' : !isxdigit((unsigned char)s[i]))
			return false;
	}
	return true;
}

static void build_nics(struct checker *c)
{
	struct vmx_model *m = c->m;
	static const char *const conn_types[] = { "bridged", "hostonly", "nat", "custom", "internal", "none" };
	for (unsigned i = 0; i < VMX_MAX_NICS; i++) {
		struct vmx_nic *n = &m->nics[i];
		char key[64];
		n->index = i;
		snprintf(key, sizeof key, "ethernet%u.present", i);
		n->present = get_bool(c, key, false);
		if (!n->present)
			continue;
		snprintf(key, sizeof key, "ethernet%u.virtualDev", i);
		const char *v = vmx_get(c->f, key);
		if (v && (str_ieq(v, "vlance") || str_ieq(v, "pcnet32")))
			n->dev = VMX_NIC_PCNET;
		else if (v && str_ieq(v, "vmxnet"))
			n->dev = VMX_NIC_VMXNET3;
		else
			n->dev = (enum vmx_nic_dev)get_enum(c, key, nic_names, ARRAY_SIZE(nic_names), VMX_NIC_VIRTIO,
				"virtio, e1000, e1000e, vmxnet3, vlance or pcnet");
		snprintf(key, sizeof key, "ethernet%u.connectionType", i);
		int ct = get_enum(c, key, conn_types, ARRAY_SIZE(conn_types), 0, "bridged, hostonly, nat, custom, internal or none");
		n->connection_type = xstrdup(conn_types[ct]);
		const char *nn = get(c, "ethernet%u.networkName", i);
		n->network_name = nn ? xstrdup(nn) : NULL;
		snprintf(key, sizeof key, "ethernet%u.startConnected", i);
		n->start_connected = get_bool(c, key, true);

		snprintf(key, sizeof key, "ethernet%u.addressType", i);
		const char *at = vmx_get(c->f, key);
		if (!at || str_ieq(at, "generated") || str_ieq(at, "vpx")) {
			n->mac_type = VMX_MAC_GENERATED;
			snprintf(key, sizeof key, "ethernet%u.generatedAddress", i);
			const char *ga = vmx_get(c->f, key);
			if (ga && !mac_well_formed(ga))
				problem(c, key, "expected a MAC address like 02:56:4c:01:02:03, got \"%s\"", ga);
			else if (ga)
				snprintf(n->mac, sizeof n->mac, "%s", ga);
		} else if (str_ieq(at, "static")) {
			n->mac_type = VMX_MAC_STATIC;
			snprintf(key, sizeof key, "ethernet%u.address", i);
			const char *a = vmx_get(c->f, key);
			if (!a)
				problem(c, key, "addressType is static but no address is set");
			else if (vmx_mac_check_static(a) < 0)
				problem(c, key, "%s", vela_errmsg());
			else
				snprintf(n->mac, sizeof n->mac, "%s", a);
		} else {
			problem(c, key, "expected generated or static, got \"%s\"", at);
		}
		for (unsigned j = 0; j < i && n->mac[0]; j++) {
			if (m->nics[j].present && str_ieq(m->nics[j].mac, n->mac))
				problem(c, key, "MAC address %s is already used by ethernet%u", n->mac, j);
		}
	}
}

/* ----------------------------------------------------------- serial */

static void build_serials(struct checker *c)
{
	struct vmx_model *m = c->m;
	static const char *const types[] = { "none", "file", "pipe", "console", "device" };
	int console_at = -1;
	for (unsigned i = 0; i < VMX_MAX_SERIAL; i++) {
		struct vmx_serial *s = &m->serials[i];
		char key[64];
		s->index = i;
		snprintf(key, sizeof key, "serial%u.present", i);
		s->present = get_bool(c, key, false);
		if (!s->present)
			continue;
		snprintf(key, sizeof key, "serial%u.startConnected", i);
		s->start_connected = get_bool(c, key, true);
		snprintf(key, sizeof key, "serial%u.fileType", i);
		const char *ft = vmx_get(c->f, key);
		if (ft && (str_ieq(ft, "thinprint") || str_ieq(ft, "network"))) {
			problem(c, key, "fileType \"%s\" is not supported; use none, file, pipe, console or device", ft);
			continue;
		}
		s->type = (enum vmx_serial_type)get_enum(c, key, types, ARRAY_SIZE(types), VMX_SERIAL_NONE,
			"none, file, pipe, console or device");
		if (s->type == VMX_SERIAL_CONSOLE) {
			if (console_at >= 0)
				problem(c, key, "serial%d is already the console; only one port can be", console_at);
			console_at = (int)i;
		}
		if (s->type == VMX_SERIAL_FILE || s->type == VMX_SERIAL_PIPE || s->type == VMX_SERIAL_DEVICE) {
			snprintf(key, sizeof key, "serial%u.fileName", i);
			const char *fn = vmx_get(c->f, key);
			if (!fn || !*fn)
				problem(c, key, "serial port of type %s needs a file name", types[s->type]);
			else
				s->path = resolve(c, key, fn);
		}
		if (s->type == VMX_SERIAL_PIPE) {
			static const char *const ends[] = { "server", "client" };
			snprintf(key, sizeof key, "serial%u.pipe.endPoint", i);
			s->pipe_server = get_enum(c, key, ends, 2, 0, "server or client") == 0;
		}
	}
}

/* ------------------------------------------------------------- misc */

static void check_shares(struct checker *c, const char *key, uint64_t min, uint64_t max)
{
	const char *v = vmx_get(c->f, key);
	uint64_t x;
	if (!v || str_ieq(v, "low") || str_ieq(v, "normal") || str_ieq(v, "high"))
		return;
	if (parse_u64(v, UINT64_MAX, &x) < 0 || x < min || x > max)
		problem(c, key, "expected low, normal, high or a number from %llu to %llu, got \"%s\"",
			(unsigned long long)min, (unsigned long long)max, v);
}

static void check_affinity(struct checker *c)
{
	const char *v = vmx_get(c->f, "sched.cpu.affinity");
	if (!v || str_ieq(v, "all"))
		return;
	for (const char *p = v; *p; ) {
		unsigned cpu;
		while (*p == ' ')
			p++;
		if (!read_index(&p, &cpu)) {
			problem(c, "sched.cpu.affinity", "expected \"all\" or a list of CPU numbers like \"0,2,3\", got \"%s\"", v);
			return;
		}
		while (*p == ' ')
			p++;
		if (*p == ',')
			p++;
		else if (*p) {
			problem(c, "sched.cpu.affinity", "expected \"all\" or a list of CPU numbers like \"0,2,3\", got \"%s\"", v);
			return;
		}
	}
}

static void build_boot(struct checker *c)
{
	struct vmx_model *m = c->m;
	const char *k = vmx_get(c->f, "boot.kernel");
	if (k && *k) {
		m->boot.kernel = resolve(c, "boot.kernel", k);
		check_exists(c, "boot.kernel", k, m->boot.kernel, "kernel");
	}
	const char *i = vmx_get(c->f, "boot.initrd");
	if (i && *i) {
		if (!m->boot.kernel)
			problem(c, "boot.initrd", "an initrd needs boot.kernel");
		m->boot.initrd = resolve(c, "boot.initrd", i);
		check_exists(c, "boot.initrd", i, m->boot.initrd, "initrd");
	}
	const char *cl = vmx_get(c->f, "boot.cmdline");
	if (cl) {
		if (!m->boot.kernel)
			problem(c, "boot.cmdline", "a kernel command line needs boot.kernel");
		m->boot.cmdline = xstrdup(cl);
	}
	m->boot.menu = get_bool(c, "boot.menu", false);

	const char *order = vmx_get(c->f, "boot.order");
	snprintf(m->boot.order, sizeof m->boot.order, "dcn");
	if (order) {
		char seen[5] = "";
		size_t n = 0;
		CLEANUP_FREE char *copy = xstrdup(order);
		char *save = NULL;
		for (char *tok = strtok_r(copy, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
			char letter;
			if (str_ieq(tok, "disk") || str_ieq(tok, "hdd"))
				letter = 'd';
			else if (str_ieq(tok, "cdrom"))
				letter = 'c';
			else if (str_ieq(tok, "floppy"))
				letter = 'f';
			else if (str_ieq(tok, "net") || str_ieq(tok, "network") || str_istarts_with(tok, "ethernet"))
				letter = 'n';
			else {
				problem(c, "boot.order", "expected a list of disk, cdrom, floppy, net; got \"%s\"", tok);
				break;
			}
			if (strchr(seen, letter) || n >= 4) {
				problem(c, "boot.order", "\"%s\" is listed twice", tok);
				break;
			}
			seen[n++] = letter;
			seen[n] = '\0';
		}
		if (n > 0 && n < sizeof m->boot.order)
			snprintf(m->boot.order, sizeof m->boot.order, "%s", seen);
	}
}

static void build_general(struct checker *c)
{
	struct vmx_model *m = c->m;
	const char *v;

	v = vmx_get(c->f, "displayName");
	if (v && *v)
		m->display_name = xstrdup(v);
	else {
		CLEANUP_FREE char *base = path_basename(m->config_path);
		size_t n = strlen(base);
		if (n > 4 && str_ieq(base + n - 4, ".vmx"))
			base[n - 4] = '\0';
		m->display_name = xstrdup(base);
	}
	v = vmx_get(c->f, "guestOS");
	m->guest_os = xstrdup(v && *v ? v : "other");
	v = vmx_get(c->f, "annotation");
	m->annotation = v ? xstrdup(v) : NULL;
	get_uint(c, "config.version", 1, 99, 8);
	m->virtual_hw_version = (unsigned)get_uint(c, "virtualHW.version", 1, 99, 4);

	if (!vmx_get(c->f, "memsize"))
		problem(c, "memsize", "memory size is required (memsize = \"<MB>\")");
	m->memsize_mb = get_uint(c, "memsize", VMX_MIN_MEMSIZE_MB, VMX_MAX_MEMSIZE_MB, 256);
	if (m->memsize_mb % 4)
		problem(c, "memsize", "memory size must be a multiple of 4 MB, got %llu", (unsigned long long)m->memsize_mb);
	m->vcpus = (unsigned)get_uint(c, "numvcpus", 1, VMX_MAX_VCPUS, 1);

	v = vmx_get(c->f, "uuid.bios");
	if (v) {
		if (vmx_uuid_parse(v, m->uuid_bios) < 0)
			problem(c, "uuid.bios", "expected a UUID like \"56 4d ... 6f-70 81 ... e7\", got \"%s\"", v);
		else
			m->has_uuid_bios = true;
	}
	v = vmx_get(c->f, "uuid.location");
	if (v) {
		if (vmx_uuid_parse(v, m->uuid_location) < 0)
			problem(c, "uuid.location", "expected a UUID like \"56 4d ... 6f-70 81 ... e7\", got \"%s\"", v);
		else
			m->has_uuid_location = true;
	}
	static const char *const actions[] = { NULL, "keep", "create" };
	m->uuid_action = (enum vmx_uuid_action)get_enum(c, "uuid.action", actions, 3, VMX_UUID_ASK, "keep or create");
	m->accel = (enum vmx_accel)get_enum(c, "engine.accel", accel_names, 3, VMX_ACCEL_AUTO, "auto, kvm or tcg");
	static const char *const chipsets[] = { "q35", "i440fx" };
	m->chipset = (enum vmx_chipset)get_enum(c, "platform.chipset", chipsets, 2, VMX_CHIPSET_Q35, "q35 or i440fx");
	v = vmx_get(c->f, "machine.id");
	m->machine_id = v ? xstrdup(v) : NULL;
	m->machine_id_get_disable = get_bool(c, "isolation.tools.machine.id.get.disable", false);

	m->heartbeat_timeout_s = (unsigned)get_uint(c, "tools.heartbeatTimeout", 1, 86400, 60);
	m->sync_time = get_bool(c, "tools.syncTime", false);
	m->sync_time_resume = get_bool(c, "time.synchronize.resume.disk", true);
	m->sync_time_restore = get_bool(c, "time.synchronize.restore", true);
	m->resume_repeatable = get_bool(c, "resume.repeatable", false);
	m->ctk_enabled = get_bool(c, "ctkEnabled", false);
	v = vmx_get(c->f, "suspend.directory");
	if (v && *v)
		m->suspend_dir = resolve(c, "suspend.directory", v);
	v = vmx_get(c->f, "checkpoint.vmState");
	if (v && *v)
		m->checkpoint = resolve(c, "checkpoint.vmState", v);

	/* Keys used by later subsystems: validated now so mistakes surface early. */
	static const char *const bools[] = {
		"autostart", "monitor.sleepWhenIdle", "sched.mem.pshare.enable",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bools); i++)
		get_bool(c, bools[i], false);
	get_uint(c, "autostart.order", 0, 100000, 0);
	get_uint(c, "autostart.delay", 0, 86400, 0);
	get_uint(c, "autostop.order", 0, 100000, 0);
	static const char *const stops[] = { "softpoweroff", "poweroff", "suspend" };
	get_enum(c, "autostop", stops, 3, 0, "softpoweroff, poweroff or suspend");
	check_shares(c, "sched.cpu.shares", 1, 100000);
	check_shares(c, "sched.mem.shares", 0, 100000);
	get_uint(c, "sched.cpu.min", 0, UINT32_MAX, 0);
	get_uint(c, "sched.cpu.max", 0, UINT32_MAX, 0);
	uint64_t minsize = get_uint(c, "sched.mem.minsize", 0, VMX_MAX_MEMSIZE_MB, 0);
	if (minsize > m->memsize_mb)
		problem(c, "sched.mem.minsize", "reservation %llu MB is larger than memsize %llu MB",
			(unsigned long long)minsize, (unsigned long long)m->memsize_mb);
	get_uint(c, "sched.mem.max", 0, VMX_MAX_MEMSIZE_MB, 0);
	check_affinity(c);
}

int vmx_model_build(const struct vmx_file *f, const char *config_path,
		    const struct vmx_model_opts *opts, struct strbuf *diag,
		    struct vmx_model **out)
{
	static const struct vmx_model_opts defaults = { .check_files = true };
	struct vmx_model *m = xcalloc(1, sizeof *m);
	struct checker c = { .f = f, .fname = config_path, .diag = diag, .opts = opts ? opts : &defaults, .m = m };
	const char *key, *value;

	m->config_path = xstrdup(config_path);
	m->config_dir = path_dirname(config_path);
	for (size_t i = 0; vmx_entry_at(f, i, &key, &value, NULL); i++)
		check_device_key(&c, key);
	build_general(&c);
	build_storage(&c);
	build_nics(&c);
	build_serials(&c);
	build_boot(&c);

	if (c.problems) {
		vmx_model_free(m);
		if (c.problems > 1)
			return vela_error(VELA_E_CONFIG, "%s (and %u more problem%s)", c.first, c.problems - 1, c.problems > 2 ? "s" : "");
		return vela_error(VELA_E_CONFIG, "%s", c.first);
	}
	*out = m;
	return 0;
}

void vmx_model_free(struct vmx_model *m)
{
	if (!m)
		return;
	free(m->config_path);
	free(m->config_dir);
	free(m->display_name);
	free(m->guest_os);
	free(m->annotation);
	free(m->machine_id);
	free(m->suspend_dir);
	free(m->checkpoint);
	free(m->boot.kernel);
	free(m->boot.initrd);
	free(m->boot.cmdline);
	for (size_t i = 0; i < m->n_disks; i++) {
		free(m->disks[i].file_name);
		free(m->disks[i].path);
	}
	free(m->disks);
	for (unsigned i = 0; i < VMX_MAX_NICS; i++) {
		free(m->nics[i].connection_type);
		free(m->nics[i].network_name);
	}
	for (unsigned i = 0; i < VMX_MAX_SERIAL; i++)
		free(m->serials[i].path);
	free(m->floppy.path);
	free(m);
}

int vmx_file_edit(const char *path, const char *const *keys, const char *const *values, size_t n)
{
	struct vmx_file *f = NULL;
	int r = vmx_file_load(path, &f);
	for (size_t i = 0; r == 0 && i < n; i++) {
		if (values[i])
			r = vmx_set(f, keys[i], values[i]);
		else
			vmx_unset(f, keys[i]);
	}
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	if (r == 0)
		r = vmx_model_build(f, path, &mo, NULL, &m);
	vmx_model_free(m);
	if (r == 0 && vmx_file_dirty(f))
		r = vmx_file_save(f, path);
	vmx_file_free(f);
	return r < 0 ? vela_error_context(r, "edit %s", path) : 0;
}
