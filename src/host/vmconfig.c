/*
 * vmconfig.c - a VM's settings: reading them, changing them (at once when
 * the VM is off; for the next power cycle, shown as pending, when it runs),
 * and deleting a VM with its files.
 */
#include "common.h"
#include "internal.h"
#include "vdisk.h"
#include "vmx.h"
#include "vmx-sup.h"

#include <dirent.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CDROM_KEY "ide1:0"

json_t *host_vm_settings(const char *config)
{
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	if (vmx_file_load(config, &f) < 0 || vmx_model_build(f, config, &mo, NULL, &m) < 0) {
		json_t *o = json_pack("{s:s}", "error", vela_errmsg());
		vmx_file_free(f);
		return o;
	}
	json_t *disks = json_array(), *cdroms = json_array();
	for (size_t i = 0; i < m->n_disks; i++) {
		const struct vmx_disk *d = &m->disks[i];
		json_t *o = json_pack("{s:s, s:s?}", "addr", d->addr, "file", d->path);
		if (d->type == VMX_DEV_DISK) {
			json_object_set_new(o, "mode", json_string(vmx_disk_mode_name(d->mode)));
			json_array_append_new(disks, o);
		} else {
			json_array_append_new(cdroms, o);
		}
	}
	json_t *nics = json_array();
	for (size_t i = 0; i < VMX_MAX_NICS; i++) {
		const struct vmx_nic *n = &m->nics[i];
		if (!n->present)
			continue;
		char name[24];
		snprintf(name, sizeof name, "ethernet%u", n->index);
		json_array_append_new(nics, json_pack("{s:s, s:s, s:s?, s:s, s:s}", "name", name, "connection",
						      n->connection_type ? n->connection_type : "nat", "network",
						      n->network_name, "device", vmx_nic_dev_name(n->dev), "mac", n->mac));
	}
	json_t *serials = json_array();
	for (size_t i = 0; i < VMX_MAX_SERIAL; i++) {
		const struct vmx_serial *sp = &m->serials[i];
		static const char *const types[] = { [VMX_SERIAL_NONE] = "none", [VMX_SERIAL_FILE] = "file",
						     [VMX_SERIAL_PIPE] = "pipe", [VMX_SERIAL_CONSOLE] = "console",
						     [VMX_SERIAL_DEVICE] = "device" };
		if (!sp->present)
			continue;
		char name[24];
		snprintf(name, sizeof name, "serial%u", sp->index);
		json_t *o = json_pack("{s:s, s:s, s:s?}", "name", name, "type", types[sp->type], "file", sp->path);
		if (sp->type == VMX_SERIAL_PIPE)
			json_object_set_new(o, "endpoint", json_string(sp->pipe_server ? "server" : "client"));
		json_array_append_new(serials, o);
	}
	/* The boot order as the .vmx spells it ("cdrom,disk"); letters inside. */
	char order[40] = "";
	for (size_t i = 0; i < sizeof m->boot.order && m->boot.order[i]; i++) {
		const char c = m->boot.order[i];
		const char *w = c == 'c' ? "cdrom" : c == 'd' ? "disk" : c == 'f' ? "floppy" : c == 'n' ? "net" : "?";
		snprintf(order + strlen(order), sizeof order - strlen(order), "%s%s", *order ? "," : "", w);
	}
	json_t *o = json_pack("{s:I, s:i, s:s, s:s, s:o, s:o, s:o, s:o, s:s}", "memsize", (json_int_t)m->memsize_mb,
			      "vcpus", (int)m->vcpus, "guestOS", m->guest_os ? m->guest_os : "", "annotation",
			      m->annotation ? m->annotation : "", "disks", disks, "cdroms", cdroms, "nics", nics, "serials",
			      serials, "boot_order", order);
	vmx_model_free(m);
	vmx_file_free(f);
	return o;
}

int host_vm_log(struct host *h, int64_t id, size_t max, json_t **out)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	CLEANUP_FREE char *dir = path_dirname(v.config);
	CLEANUP_FREE char *path = path_join(dir, "vela.log");
	host_vm_row_clear(&v);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			return vela_error_errno(errno, "VM %lld: %s", (long long)id, path);
		*out = json_pack("{s:s, s:I, s:b}", "text", "", "size", (json_int_t)0, "truncated", 0);   /* never ran */
		return 0;
	}
	struct stat st;
	r = fstat(fd, &st) < 0 ? vela_error_errno(errno, "%s", path) : 0;
	/* The end of the log is what an administrator looks for. */
	size_t size = r == 0 ? (size_t)st.st_size : 0, want = size < max ? size : max;
	char *buf = xcalloc(1, want + 1);
	ssize_t n = r == 0 ? pread(fd, buf, want, (off_t)(size - want)) : 0;
	close(fd);
	if (r == 0 && n < 0)
		r = vela_error_errno(errno, "%s", path);
	if (r == 0) {
		/* Start at a line, and keep only text JSON can carry. */
		char *start = buf;
		if (size > want && (start = memchr(buf, '\n', (size_t)n)))
			start++;
		else
			start = buf;
		for (char *c = start; c < buf + n; c++)
			if ((unsigned char)*c < 0x20 && *c != '\n' && *c != '\t')
				*c = '?';
		*out = json_pack("{s:s%, s:I, s:b}", "text", start, (size_t)(buf + n - start), "size", (json_int_t)size,
				 "truncated", size > want);
		if (!*out)   /* not UTF-8 */
			*out = json_pack("{s:s, s:I, s:b}", "text", "(the log is not UTF-8 text)", "size", (json_int_t)size,
					 "truncated", 1);
	}
	free(buf);
	return r;
}

int host_vm_screenshot(struct host *h, int64_t id, char **png, size_t *len)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	json_t *reply = NULL, *req = json_pack("{s:s}", "cmd", "screendump");
	if (!vmxsup_is_running(v.config))
		r = vela_error(VELA_E_BADSTATE, "VM %lld is off: no screen", (long long)id);
	else
		r = vmxsup_call(v.config, req, &reply, STATUS_TIMEOUT_MS);
	json_decref(req);
	const char *file = json_string_value(json_object_get(reply, "file"));
	if (r == 0 && !file)
		r = vela_error(VELA_E_PROTOCOL, "screendump: the supervisor named no file");
	if (r == 0) {
		r = read_file(file, 32u << 20, png, len);
		unlink(file);
	}
	json_decref(reply);
	if (r < 0)
		vela_error_context(r, "VM %lld (%s)", (long long)id, v.name);
	host_vm_row_clear(&v);
	return r;
}

/* The guest agent's view and the guestinfo values of a running VM, through
 * its supervisor: {cmd: guest} or {cmd: guestinfo, key?, value?}. */
int host_vm_guest(struct host *h, const char *user, int64_t id, bool guestinfo, const char *key, json_t *value,
		  json_t **out)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	json_t *req = json_pack("{s:s}", "cmd", guestinfo ? "guestinfo" : "guest");
	if (key)
		json_object_set_new(req, "key", json_string(key));
	if (value)
		json_object_set(req, "value", value);
	if (!vmxsup_is_running(v.config))
		r = vela_error(VELA_E_BADSTATE, "VM %lld is not running: no guest agent, no guestinfo", (long long)id);
	else
		r = vmxsup_call(v.config, req, out, STATUS_TIMEOUT_MS);
	json_decref(req);
	if (r == 0) {
		json_object_del(*out, "ok");
		if (value)
			host_event(h, HOST_AUDIT, id, user, "vm.guestinfo", "%s %s", json_is_null(value) ? "unset" : "set", key);
	} else {
		vela_error_context(r, "VM %lld (%s)", (long long)id, v.name);
	}
	host_vm_row_clear(&v);
	return r;
}

/* ------------------------------------------------------- reconfigure */

/* Keys to set (value) or remove (NULL), in order; the strings are owned. */
struct edit {
	char **keys, **values;
	size_t n, cap;
};

static void edit_add(struct edit *e, const char *key, const char *value)
{
	if (e->n == e->cap) {
		e->cap = e->cap ? 2 * e->cap : 16;
		e->keys = xrealloc(e->keys, e->cap * sizeof *e->keys);
		e->values = xrealloc(e->values, e->cap * sizeof *e->values);
	}
	e->keys[e->n] = xstrdup(key);
	e->values[e->n++] = value ? xstrdup(value) : NULL;
}

static void edit_free(struct edit *e)
{
	for (size_t i = 0; i < e->n; i++) {
		free(e->keys[i]);
		free(e->values[i]);
	}
	free(e->keys);
	free(e->values);
}

/* "scsi0:1", "ide1:0", "sata0:2", "virtio0:3" (with_unit), or "ethernet1",
 * "serial0": a device's key prefix. */
static bool device_name_ok(const char *s, bool with_unit)
{
	size_t letters = strspn(s, "abcdefghijklmnopqrstuvwxyz");
	size_t digits = letters ? strspn(s + letters, "0123456789") : 0;
	if (!letters || !digits || digits > 2)
		return false;
	const char *rest = s + letters + digits;
	if (!with_unit)
		return *rest == '\0' || (rest[0] == ':' && strspn(rest + 1, "0123456789") == strlen(rest + 1) && rest[1] &&
					   strlen(rest + 1) <= 2);
	return rest[0] == ':' && rest[1] && strspn(rest + 1, "0123456789") == strlen(rest + 1) && strlen(rest + 1) <= 2;
}

/* The .vmx keys a change set makes; validates the values. */
static int edits_of(json_t *ch, struct edit *e)
{
	json_t *v;
	if ((v = json_object_get(ch, "memsize"))) {
		if (!json_is_integer(v) || json_integer_value(v) < 16 || json_integer_value(v) > 1048576)
			return vela_error(VELA_E_RANGE, "reconfigure: memsize is 16 to 1048576 (MiB)");
		char num[32];
		snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
		edit_add(e, "memsize", num);
	}
	if ((v = json_object_get(ch, "vcpus"))) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 64)
			return vela_error(VELA_E_RANGE, "reconfigure: vcpus is 1 to 64");
		char num[32];
		snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
		edit_add(e, "numvcpus", num);
	}
	if ((v = json_object_get(ch, "guestOS"))) {
		if (!host_name_ok(json_string_value(v), 64))
			return vela_error(VELA_E_INVAL, "reconfigure: bad guestOS");
		edit_add(e, "guestOS", json_string_value(v));
	}
	if ((v = json_object_get(ch, "annotation"))) {
		const char *s = json_string_value(v);
		if (!s || strlen(s) > 4096 || strpbrk(s, "\n\r"))
			return vela_error(VELA_E_INVAL, "reconfigure: annotation is one line of at most 4096 bytes");
		edit_add(e, "annotation", *s ? s : NULL);
	}
	if ((v = json_object_get(ch, "name"))) {
		if (!host_name_ok(json_string_value(v), 255))
			return vela_error(VELA_E_BADNAME, "reconfigure: bad name");
		edit_add(e, "displayName", json_string_value(v));
	}
	if ((v = json_object_get(ch, "cdrom"))) {
		/* An ISO file (absolute, or relative to the VM's folder), or ""
		 * for no CD-ROM drive. */
		const char *s = json_string_value(v);
		if (!s || strlen(s) > 1024 || (*s && !host_name_ok(s, 1024)))
			return vela_error(VELA_E_INVAL, "reconfigure: cdrom is a file name, or \"\" for none");
		edit_add(e, CDROM_KEY ".present", *s ? "TRUE" : NULL);
		edit_add(e, CDROM_KEY ".deviceType", *s ? "cdrom-image" : NULL);
		edit_add(e, CDROM_KEY ".fileName", *s ? s : NULL);
	}
	if ((v = json_object_get(ch, "nic"))) {
		if (!json_is_boolean(v))
			return vela_error(VELA_E_INVAL, "reconfigure: nic is true or false");
		edit_add(e, "ethernet0.present", json_is_true(v) ? "TRUE" : NULL);
		edit_add(e, "ethernet0.connectionType", json_is_true(v) ? "nat" : NULL);
	}
	if ((v = json_object_get(ch, "boot_order"))) {
		/* "cdrom,disk": checked with the whole file below. */
		if (!host_name_ok(json_string_value(v), 64))
			return vela_error(VELA_E_INVAL, "reconfigure: boot_order is a list such as \"cdrom,disk\"");
		edit_add(e, "boot.order", json_string_value(v));
	}
	if ((v = json_object_get(ch, "disk_modes"))) {
		const char *addr;
		json_t *mode;
		if (!json_is_object(v))
			return vela_error(VELA_E_INVAL, "reconfigure: disk_modes is {\"scsi0:0\": \"independent-persistent\", ...}");
		json_object_foreach(v, addr, mode) {
			static const char *const modes[] = { "persistent", "nonpersistent", "undoable", "append",
							     "independent-persistent", "independent-nonpersistent" };
			size_t m = 0;
			while (json_is_string(mode) && m < ARRAY_SIZE(modes) && strcmp(json_string_value(mode), modes[m]) != 0)
				m++;
			if (!device_name_ok(addr, true) || !json_is_string(mode) || m == ARRAY_SIZE(modes))
				return vela_error(VELA_E_INVAL, "reconfigure: disk_modes: \"%.20s\": a disk address and one of"
								" persistent, nonpersistent, undoable, append,"
								" independent-persistent, independent-nonpersistent", addr);
			char key[64];
			snprintf(key, sizeof key, "%s.mode", addr);
			edit_add(e, key, modes[m]);
		}
	}
	static const char *const known[] = { "memsize", "vcpus", "guestOS", "annotation", "name", "cdrom", "nic", "folder",
					     "boot_order", "disk_modes", "add_disks", "add_nics", "add_serials",
					     "remove_devices" };
	const char *k;
	json_object_foreach(ch, k, v) {
		size_t i = 0;
		while (i < ARRAY_SIZE(known) && strcmp(k, known[i]) != 0)
			i++;
		if (i == ARRAY_SIZE(known))
			return vela_error(VELA_E_INVAL, "reconfigure: unknown setting \"%.64s\" (memsize, vcpus, guestOS,"
							" annotation, name, folder, cdrom, nic, boot_order, disk_modes,"
							" add_disks, add_nics, add_serials, remove_devices)", k);
	}
	return 0;
}

static int update_inventory(struct host *h, int64_t id, const char *name, const char *folder)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "UPDATE vms SET name = COALESCE(?, name), folder = COALESCE(?, folder) WHERE id = ?",
				&st);
	if (r == 0) {
		if (name)
			sqlite3_bind_text(st, 1, name, -1, SQLITE_TRANSIENT);
		if (folder)
			sqlite3_bind_text(st, 2, folder, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(st, 3, id);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "reconfigure");
		atomic_fetch_add(&h->generation, 1);
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

/* Send the edits to the VM's supervisor (it owns the file while the VM runs). */
static int edit_running(const char *config, const struct edit *e)
{
	json_t *keys = json_object();
	for (size_t i = 0; i < e->n; i++)
		json_object_set_new(keys, e->keys[i], e->values[i] ? json_string(e->values[i]) : json_null());
	json_t *reply = NULL, *req = json_pack("{s:s, s:o}", "cmd", "edit", "keys", keys);
	int r = vmxsup_call(config, req, &reply, STATUS_TIMEOUT_MS);
	json_decref(req);
	json_decref(reply);
	return r;
}

/* A serial port on the first free slot: {type: file|pipe|console, file
 * (file and pipe: a plain name, made in the VM's folder), endpoint?:
 * server|client (pipe)}.  Host devices and paths elsewhere are for whoever
 * edits the .vmx on the host, not for a VM's administrator. */
static int add_serial(struct vmx_file *f, json_t *d)
{
	const char *type = json_string_value(json_object_get(d, "type"));
	const char *file = json_string_value(json_object_get(d, "file"));
	const char *end = json_string_value(json_object_get(d, "endpoint"));
	bool needs_file = type && (strcmp(type, "file") == 0 || strcmp(type, "pipe") == 0);
	if (!json_is_object(d) || !type || (!needs_file && strcmp(type, "console") != 0))
		return vela_error(VELA_E_INVAL, "reconfigure: add_serials: {type: file|pipe|console, file?, endpoint?}");
	static const char name_chars[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
	if (needs_file != (file != NULL) ||
	    (file && (!*file || strlen(file) > 128 || file[0] == '.' || strspn(file, name_chars) != strlen(file))))
		return vela_error(VELA_E_BADNAME, "reconfigure: add_serials: a %s port needs a file name in the VM's"
						  " folder (no path)", type);
	if (end && (strcmp(type, "pipe") != 0 || (strcmp(end, "server") != 0 && strcmp(end, "client") != 0)))
		return vela_error(VELA_E_INVAL, "reconfigure: add_serials: endpoint is server or client, for a pipe");
	char key[64];
	unsigned slot = 0;
	for (; slot < VMX_MAX_SERIAL; slot++) {
		snprintf(key, sizeof key, "serial%u.present", slot);
		bool present = false;
		if (!vmx_get(f, key) || parse_bool(vmx_get(f, key), &present) < 0 || !present)
			break;
	}
	if (slot == VMX_MAX_SERIAL)
		return vela_error(VELA_E_LIMIT, "reconfigure: add_serials: all %d serial ports are in use", VMX_MAX_SERIAL);
	vmx_set(f, key, "TRUE");
	snprintf(key, sizeof key, "serial%u.fileType", slot);
	vmx_set(f, key, type);
	if (file) {
		snprintf(key, sizeof key, "serial%u.fileName", slot);
		vmx_set(f, key, file);
	}
	if (end) {
		snprintf(key, sizeof key, "serial%u.pipe.endPoint", slot);
		vmx_set(f, key, end);
	}
	return 0;
}

/*
 * The changes that depend on what the .vmx has: new disks on free units
 * (their files made now, in the VM's folder; listed in created so that a
 * failure can take them back), NICs on free slots, and devices removed with
 * all their keys.
 */
static int hardware_edits(const char *config, json_t *ch, struct edit *e, json_t *created)
{
	json_t *add_disks = json_object_get(ch, "add_disks"), *add_nics = json_object_get(ch, "add_nics");
	json_t *remove = json_object_get(ch, "remove_devices"), *add_serials = json_object_get(ch, "add_serials");
	if (!add_disks && !add_nics && !remove && !add_serials)
		return 0;
	if ((add_nics && (!json_is_array(add_nics) || json_array_size(add_nics) > 4)) ||
	    (add_serials && (!json_is_array(add_serials) || json_array_size(add_serials) > VMX_MAX_SERIAL)) ||
	    (remove && (!json_is_array(remove) || json_array_size(remove) > 16)))
		return vela_error(VELA_E_INVAL, "reconfigure: add_nics and add_serials are lists of at most 4,"
						" remove_devices of at most 16");
	struct vmx_file *before = NULL, *f = NULL;
	int r = vmx_file_load(config, &before);
	if (r == 0)
		r = vmx_file_load(config, &f);
	size_t i;
	json_t *d;
	/* Removals first: a slot they free can take a new device. */
	json_array_foreach(remove, i, d) {
		const char *dev = json_string_value(d);
		if (r < 0)
			break;
		if (!dev || !device_name_ok(dev, false)) {
			r = vela_error(VELA_E_INVAL, "reconfigure: remove_devices: \"%.20s\" is not a device such as scsi0:1,"
						     " ethernet1 or serial0", dev ? dev : "");
			break;
		}
		size_t n = strlen(dev), found = 0;
		const char *k, *val;
		for (size_t j = 0; vmx_entry_at(before, j, &k, &val, NULL); j++)
			if (strncmp(k, dev, n) == 0 && k[n] == '.') {
				vmx_unset(f, k);
				found++;
			}
		if (!found)
			r = vela_error(VELA_E_NOTFOUND, "reconfigure: the VM has no device %s", dev);
	}
	if (r == 0 && add_disks) {
		CLEANUP_FREE char *dir = path_dirname(config);
		CLEANUP_FREE char *base = path_basename(config);
		size_t len = strlen(base);
		if (len > 4 && strcmp(base + len - 4, ".vmx") == 0)
			base[len - 4] = '\0';
		r = host_create_disks(f, dir, base, add_disks, NULL, created);
		if (r < 0)
			vela_error_context(r, "reconfigure: add_disks");
	}
	json_array_foreach(add_nics, i, d) {
		if (r < 0)
			break;
		const char *conn = json_string_value(json_object_get(d, "connection"));
		const char *net = json_string_value(json_object_get(d, "network"));
		const char *dev = json_string_value(json_object_get(d, "device"));
		if (!json_is_object(d) || (conn && !host_name_ok(conn, 32)) || (net && !host_name_ok(net, 64)) ||
		    (dev && !host_name_ok(dev, 32))) {
			r = vela_error(VELA_E_INVAL, "reconfigure: add_nics: {connection?: nat|bridged|hostonly, network?,"
						     " device?: virtio|e1000|e1000e|vmxnet3}");
			break;
		}
		unsigned slot = 0;
		char key[64];
		for (; slot < VMX_MAX_NICS; slot++) {
			snprintf(key, sizeof key, "ethernet%u.present", slot);
			bool present = false;
			if (!vmx_get(f, key) || parse_bool(vmx_get(f, key), &present) < 0 || !present)
				break;
		}
		if (slot == VMX_MAX_NICS) {
			r = vela_error(VELA_E_LIMIT, "reconfigure: add_nics: all %d network cards are in use", VMX_MAX_NICS);
			break;
		}
		vmx_set(f, key, "TRUE");
		snprintf(key, sizeof key, "ethernet%u.connectionType", slot);
		vmx_set(f, key, conn ? conn : "nat");
		snprintf(key, sizeof key, "ethernet%u.networkName", slot);
		if (net)
			vmx_set(f, key, net);
		snprintf(key, sizeof key, "ethernet%u.virtualDev", slot);
		if (dev)
			vmx_set(f, key, dev);
	}
	json_array_foreach(add_serials, i, d) {
		if (r < 0)
			break;
		r = add_serial(f, d);
	}
	/* What differs between the file and f, as edits. */
	const char *k, *val;
	for (size_t j = 0; r == 0 && vmx_entry_at(f, j, &k, &val, NULL); j++) {
		const char *old = vmx_get(before, k);
		if (!old || strcmp(old, val) != 0)
			edit_add(e, k, val);
	}
	for (size_t j = 0; r == 0 && vmx_entry_at(before, j, &k, &val, NULL); j++)
		if (!vmx_get(f, k))
			edit_add(e, k, NULL);
	vmx_file_free(before);
	vmx_file_free(f);
	return r;
}

int host_vm_reconfigure(struct host *h, const char *user, int64_t id, json_t *changes, json_t **out)
{
	if (!json_is_object(changes) || json_object_size(changes) == 0)
		return vela_error(VELA_E_INVAL, "reconfigure: give the settings to change");
	struct edit e = { .n = 0 };
	int r = edits_of(changes, &e);
	if (r < 0) {
		edit_free(&e);
		return r;
	}
	const char *name = json_string_value(json_object_get(changes, "name"));
	const char *folder = json_string_value(json_object_get(changes, "folder"));
	if (json_object_get(changes, "folder") && !host_folder_ok(folder)) {
		edit_free(&e);
		return vela_error(VELA_E_BADNAME, "reconfigure: bad inventory folder");
	}
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	if ((r = host_vm_lock(h, id, &v, &l)) < 0) {
		edit_free(&e);
		return r;
	}
	bool running = vmxsup_is_running(v.config);
	json_t *created = json_array();
	r = hardware_edits(v.config, changes, &e, created);
	if (r == 0 && e.n > 0)
		r = running ? edit_running(v.config, &e) : vmx_file_edit(v.config, (const char *const *)e.keys,
									  (const char *const *)e.values, e.n);
	if (r < 0) {
		/* New disks of a refused change go again. */
		size_t i;
		json_t *p;
		json_array_foreach(created, i, p)
			vdisk_delete(json_string_value(p), true);
	}
	json_decref(created);
	if (r == 0)
		r = update_inventory(h, id, name, folder);
	pthread_mutex_unlock(&l->lock);
	if (r == 0) {
		CLEANUP_FREE char *keys = NULL;
		json_t *jk = json_array();
		const char *k;
		json_t *val;
		json_object_foreach(changes, k, val)
			json_array_append_new(jk, json_string(k));
		keys = json_dumps(jk, JSON_COMPACT);
		json_decref(jk);
		host_event(h, HOST_AUDIT, id, user, "vm.reconfigured", "%s%s", keys,
			   running && e.n ? " (VM on: pending until the next power cycle)" : "");
		r = host_vm_get(h, id, out);
	} else {
		vela_error_context(r, "reconfigure VM %lld (%s)", (long long)id, v.name);
	}
	edit_free(&e);
	host_vm_row_clear(&v);
	return r;
}

/* ------------------------------------------------------------ delete */

/* Remove a VM's inventory record and what hangs on it. */
int host_vm_forget_locked(struct host *h, int64_t id)
{
	static const char *const sql[] = {
		"DELETE FROM vms WHERE id = ?", "DELETE FROM vm_state WHERE vm = ?", "DELETE FROM vm_live WHERE vm = ?",
		"DELETE FROM backup_schedules WHERE vm = ?", "DELETE FROM autostart WHERE vm = ?",
		"DELETE FROM grants WHERE scope = 'vm:' || ?",
	};
	for (size_t i = 0; i < ARRAY_SIZE(sql); i++) {
		CLEANUP_STMT sqlite3_stmt *st = NULL;
		int r = host_db_prepare(h, sql[i], &st);
		if (r < 0)
			return r;
		sqlite3_bind_int64(st, 1, id);
		if (sqlite3_step(st) != SQLITE_DONE)
			return host_db_fail(h, "unregister");
	}
	atomic_fetch_add(&h->generation, 1);
	return 0;
}

static bool in_dir(const char *path, const char *dir)
{
	size_t n = strlen(dir);
	return strncmp(path, dir, n) == 0 && path[n] == '/' && !strchr(path + n + 1, '/');
}

static void add_unique(json_t *list, const char *path)
{
	size_t i;
	json_t *p;
	json_array_foreach(list, i, p)
		if (strcmp(json_string_value(p), path) == 0)
			return;
	json_array_append_new(list, json_string(path));
}

/* The supervisor's log in the VM's folder: vela.log and its rotated
 * vela-N.log. */
static bool supervisor_log(const char *name)
{
	if (strcmp(name, "vela.log") == 0)
		return true;
	if (strncmp(name, "vela-", 5) != 0)
		return false;
	const char *p = name + 5;
	size_t digits = strspn(p, "0123456789");
	return digits > 0 && strcmp(p + digits, ".log") == 0;
}

/*
 * The files a VM owns, in the order to delete them: every image of each
 * disk's chain (top first) that lies in the VM's folder, then the files of
 * the folder named after the .vmx (its .vmsd, logs, nvram), the .vmx last.
 * Disks outside the folder may be shared (a base disk of several VMs): they
 * are kept and named in *kept.
 */
static int vm_files(const char *config, json_t **files, json_t **kept)
{
	CLEANUP_FREE char *dir = path_dirname(config);
	CLEANUP_FREE char *base = path_basename(config);
	size_t stem = strlen(base) > 4 && strcmp(base + strlen(base) - 4, ".vmx") == 0 ? strlen(base) - 4 : strlen(base);
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	int r = vmx_file_load(config, &f);
	if (r == 0)
		r = vmx_model_build(f, config, &mo, NULL, &m);
	vmx_file_free(f);
	if (r < 0)
		return r;
	*files = json_array();
	*kept = json_array();
	for (size_t i = 0; i < m->n_disks; i++) {
		const struct vmx_disk *d = &m->disks[i];
		if (d->type != VMX_DEV_DISK || !d->path)
			continue;
		struct vdisk *vd = NULL;
		struct vdisk_info *info = NULL;
		if (vdisk_open(d->path, VDISK_OPEN_RDONLY, &vd) == 0 && vdisk_get_info(vd, &info) == 0) {
			for (struct vdisk_info *p = info; p; p = p->backing) {
				CLEANUP_FREE char *real = realpath(p->path, NULL);
				const char *q = real ? real : p->path;
				if (in_dir(q, dir))
					add_unique(*files, q);
				else
					add_unique(*kept, q);
			}
		} else if (in_dir(d->path, dir)) {
			add_unique(*files, d->path);   /* unreadable: its file still goes */
		}
		vdisk_info_free(info);
		vdisk_close(vd);
	}
	vmx_model_free(m);
	/* Another VM in the same folder ("web.vmx" next to "web-2.vmx"):
	 * then only "<stem>.*" is this one's. */
	bool shared = false;
	DIR *dd = opendir(dir);
	struct dirent *e;
	while (dd && (e = readdir(dd))) {
		size_t n = strlen(e->d_name);
		shared |= n > 4 && strcmp(e->d_name + n - 4, ".vmx") == 0 && strcmp(e->d_name, base) != 0;
	}
	if (dd)
		rewinddir(dd);
	while (dd && (e = readdir(dd))) {
		if (!shared && supervisor_log(e->d_name)) {
			CLEANUP_FREE char *p = path_join(dir, e->d_name);
			add_unique(*files, p);
			continue;
		}
		if (strncmp(e->d_name, base, stem) != 0 || strcmp(e->d_name, base) == 0)
			continue;
		char c = e->d_name[stem];
		if (c != '.' && (shared || (c != '-' && c != '_')))
			continue;
		CLEANUP_FREE char *p = path_join(dir, e->d_name);
		struct stat st;
		if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
			add_unique(*files, p);
	}
	if (dd)
		closedir(dd);
	add_unique(*files, config);
	return 0;
}

int host_vm_delete(struct host *h, const char *user, int64_t id, bool files, struct host_task *t, json_t **out)
{
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	int r = host_vm_lock(h, id, &v, &l);
	if (r < 0)
		return r;
	json_t *list = NULL, *kept = NULL, *removed = json_array();
	if (vmxsup_is_running(v.config)) {
		r = vela_error(VELA_E_BADSTATE, "VM %lld (%s) is powered on: power it off first", (long long)id, v.name);
	} else if (files && (r = vm_files(v.config, &list, &kept)) < 0) {
		vela_error_context(r, "delete VM %lld: its configuration cannot be read, so its files are unknown"
				      " (unregister it instead)", (long long)id);
	} else {
		/* The record goes first: a VM whose files are half gone must not
		 * stay in the inventory. */
		pthread_mutex_lock(&h->db_lock);
		r = host_vm_forget_locked(h, id);
		if (r == 0)
			r = host_event_locked(h, HOST_AUDIT, id, user, files ? "vm.deleted" : "vm.unregistered", v.config);
		pthread_mutex_unlock(&h->db_lock);
	}
	size_t i, failed = 0;
	json_t *p;
	if (r == 0 && files) {
		json_array_foreach(list, i, p) {
			host_task_progress(t, (unsigned)(i * 100 / json_array_size(list)));
			const char *path = json_string_value(p);
			struct stat st;
			if (lstat(path, &st) < 0)
				continue;   /* an extent vdisk_delete took with its disk */
			const char *ext = strrchr(path, '.');
			bool image = ext && (strcmp(ext, ".vmdk") == 0 || strcmp(ext, ".vhd") == 0 ||
					     strcmp(ext, ".qcow2") == 0);
			int e = image ? vdisk_delete(path, true) : (unlink(path) < 0 ? -errno : 0);
			if (e < 0 && image)
				e = unlink(path) < 0 ? -errno : 0;   /* a damaged image is still a file */
			if (e < 0) {
				failed++;
				json_array_append(kept, p);
				vela_log(VELA_LOG_WARN, "delete VM %lld: %s: %s", (long long)id, path, strerror(-e));
			} else {
				json_array_append(removed, p);
			}
		}
		CLEANUP_FREE char *dir = path_dirname(v.config);
		bool dir_gone = rmdir(dir) == 0;
		if (failed)
			host_event(h, HOST_WARNING, id, user, "vm.delete.incomplete", "%zu files could not be removed", failed);
		*out = json_pack("{s:I, s:O, s:O, s:b}", "id", (json_int_t)id, "removed", removed, "kept", kept,
				 "folder_removed", dir_gone);
	} else if (r == 0) {
		*out = json_pack("{s:I, s:[], s:[], s:b}", "id", (json_int_t)id, "removed", "kept", "folder_removed", 0);
	}
	pthread_mutex_unlock(&l->lock);
	json_decref(list);
	json_decref(kept);
	json_decref(removed);
	host_vm_row_clear(&v);
	return r;
}
