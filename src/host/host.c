/* host.c - inventory, power control, events and datastores of one host. */
#include "common.h"
#include "host.h"
#include "internal.h"
#include "vmx.h"
#include "vmx-sup.h"
#include "vdisk.h"
#include "vela-config.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

/* Condition variables here wait with deadlines on the monotonic clock. */
void host_cond_init(pthread_cond_t *c)
{
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(c, &ca);
	pthread_condattr_destroy(&ca);
}

struct timespec host_deadline_in(int ms)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	t.tv_sec += ms / 1000;
	t.tv_nsec += (ms % 1000) * 1000000l;
	if (t.tv_nsec >= 1000000000l) {
		t.tv_sec++;
		t.tv_nsec -= 1000000000l;
	}
	return t;
}

/* Index of s in names[first..n), or -1: the enums' parse functions. */
int host_name_index(const char *const *names, size_t n, size_t first, const char *s)
{
	for (size_t i = first; s && i < n; i++)
		if (strcmp(s, names[i]) == 0)
			return (int)i;
	return -1;
}

static const char *const severity_names[] = { "info", "warning", "error", "audit" };

const char *host_severity_name(enum host_severity s)
{
	return (unsigned)s < ARRAY_SIZE(severity_names) ? severity_names[s] : "info";
}

int host_severity_parse(const char *s, enum host_severity *out)
{
	int i = host_name_index(severity_names, ARRAY_SIZE(severity_names), 0, s);
	if (i < 0)
		return vela_error(VELA_E_INVAL, "unknown severity \"%.40s\" (info, warning, error, audit)", s ? s : "");
	*out = (enum host_severity)i;
	return 0;
}

/* ------------------------------------------------------------ database */

int host_db_fail(struct host *h, const char *what)
{
	return vela_error(VELA_E_IO, "host database: %s: %s", what, sqlite3_errmsg(h->db));
}

static const char schema[] =
	"PRAGMA journal_mode=WAL;"
	"PRAGMA synchronous=NORMAL;"
	"CREATE TABLE IF NOT EXISTS vms("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  name TEXT NOT NULL,"
	"  folder TEXT NOT NULL DEFAULT '/',"
	"  config TEXT NOT NULL UNIQUE,"
	"  created INTEGER NOT NULL);"
	"CREATE TABLE IF NOT EXISTS events("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  time INTEGER NOT NULL,"
	"  severity TEXT NOT NULL,"
	"  vm INTEGER NOT NULL DEFAULT 0,"
	"  user TEXT,"
	"  type TEXT NOT NULL,"
	"  message TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS events_by_vm ON events(vm, id);"
	"CREATE TABLE IF NOT EXISTS vm_state("
	"  vm INTEGER PRIMARY KEY,"
	"  state TEXT NOT NULL);"
	/* What the refresher last saw of a running VM's guest: for the lists,
	 * without asking every supervisor at every list. */
	"CREATE TABLE IF NOT EXISTS vm_live("
	"  vm INTEGER PRIMARY KEY,"
	"  heartbeat TEXT NOT NULL,"
	"  guest_os TEXT,"
	"  on_since INTEGER);"
	"CREATE TABLE IF NOT EXISTS backup_schedules("
	"  vm INTEGER PRIMARY KEY,"
	"  datastore TEXT NOT NULL,"
	"  folder TEXT NOT NULL,"
	"  every_s INTEGER NOT NULL,"
	"  keep INTEGER NOT NULL,"
	"  quiesce INTEGER NOT NULL,"
	"  compress INTEGER NOT NULL,"
	"  next_run INTEGER NOT NULL,"
	"  last_task INTEGER,"
	"  incremental INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS autostart("
	"  vm INTEGER PRIMARY KEY,"
	"  enabled INTEGER NOT NULL,"
	"  ord INTEGER NOT NULL,"
	"  delay INTEGER NOT NULL,"
	"  stop TEXT NOT NULL);"
	"CREATE TABLE IF NOT EXISTS grants("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  principal TEXT NOT NULL,"
	"  scope TEXT NOT NULL,"
	"  role TEXT NOT NULL,"
	"  UNIQUE(principal, scope));"
	"CREATE TABLE IF NOT EXISTS tokens("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  user TEXT NOT NULL,"
	"  name TEXT NOT NULL,"
	"  digest TEXT NOT NULL UNIQUE,"
	"  created INTEGER NOT NULL,"
	"  expires INTEGER NOT NULL DEFAULT 0);"
	"CREATE TABLE IF NOT EXISTS tasks("
	"  id INTEGER PRIMARY KEY AUTOINCREMENT,"
	"  type TEXT NOT NULL,"
	"  vm INTEGER NOT NULL DEFAULT 0,"
	"  user TEXT NOT NULL,"
	"  target TEXT NOT NULL,"
	"  state TEXT NOT NULL,"
	"  progress INTEGER NOT NULL,"
	"  cancelable INTEGER NOT NULL,"
	"  created INTEGER NOT NULL,"
	"  ended INTEGER,"
	"  result TEXT,"
	"  error_code INTEGER,"
	"  error TEXT);"
	"CREATE INDEX IF NOT EXISTS tasks_by_vm ON tasks(vm, id);"
	"CREATE TABLE IF NOT EXISTS stats("
	"  vm INTEGER NOT NULL,"
	"  time INTEGER NOT NULL,"
	"  cpu REAL NOT NULL,"
	"  mem INTEGER NOT NULL,"
	"  mem_total INTEGER NOT NULL DEFAULT 0,"
	"  disk_rd INTEGER NOT NULL DEFAULT 0,"
	"  disk_wr INTEGER NOT NULL DEFAULT 0,"
	"  net_rx INTEGER NOT NULL DEFAULT 0,"
	"  net_tx INTEGER NOT NULL DEFAULT 0);"
	"CREATE INDEX IF NOT EXISTS stats_by_vm ON stats(vm, time);";

void host_db_finalize(sqlite3_stmt **st)
{
	if (*st)
		sqlite3_finalize(*st);
}

/* Prepare sql; caller holds db_lock. */
int host_db_prepare(struct host *h, const char *sql, sqlite3_stmt **st)
{
	if (sqlite3_prepare_v2(h->db, sql, -1, st, NULL) != SQLITE_OK)
		return host_db_fail(h, "prepare");
	return 0;
}

static json_t *column_json(sqlite3_stmt *st, int i)
{
	switch (sqlite3_column_type(st, i)) {
	case SQLITE_INTEGER:
		return json_integer(sqlite3_column_int64(st, i));
	case SQLITE_NULL:
		return json_null();
	case SQLITE_FLOAT:
		return json_real(sqlite3_column_double(st, i));
	default:
		return json_string((const char *)sqlite3_column_text(st, i));
	}
}

json_t *host_db_row(sqlite3_stmt *st, int ncols)
{
	json_t *o = json_object();
	for (int i = 0; i < ncols; i++)
		json_object_set_new(o, sqlite3_column_name(st, i), column_json(st, i));
	return o;
}

/* Every row of a stepped statement as an object keyed by column name. */
int host_db_rows(struct host *h, sqlite3_stmt *st, json_t **out)
{
	json_t *a = json_array();
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		json_array_append_new(a, host_db_row(st, sqlite3_column_count(st)));
	if (rc != SQLITE_DONE) {
		json_decref(a);
		return host_db_fail(h, "query");
	}
	*out = a;
	return 0;
}

/* Every row of a query without parameters. */
int host_db_query(struct host *h, const char *sql, json_t **out)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, sql, &st);
	if (r == 0)
		r = host_db_rows(h, st, out);
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

/* ------------------------------------------------------------- events */

int host_event_locked(struct host *h, enum host_severity sev, int64_t vm_id, const char *user, const char *type,
			const char *msg)
{
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "INSERT INTO events(time, severity, vm, user, type, message) VALUES(?,?,?,?,?,?)", &st);
	if (r < 0)
		return r;
	sqlite3_bind_int64(st, 1, time_real_ms());
	sqlite3_bind_text(st, 2, host_severity_name(sev), -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 3, vm_id);
	if (user)
		sqlite3_bind_text(st, 4, user, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 5, type, -1, SQLITE_TRANSIENT);
	sqlite3_bind_text(st, 6, msg, -1, SQLITE_TRANSIENT);
	if (sqlite3_step(st) != SQLITE_DONE)
		return host_db_fail(h, "record event");
	pthread_mutex_lock(&h->event_lock);
	h->last_event = sqlite3_last_insert_rowid(h->db);
	pthread_cond_broadcast(&h->event_cond);
	pthread_mutex_unlock(&h->event_lock);
	vela_log(sev == HOST_ERROR ? VELA_LOG_ERROR : sev == HOST_WARNING ? VELA_LOG_WARN : VELA_LOG_INFO,
		 "event %s vm=%lld user=%s: %s", type, (long long)vm_id, user ? user : "-", msg);
	return 0;
}

int host_event(struct host *h, enum host_severity sev, int64_t vm_id, const char *user, const char *type,
	       const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *msg = NULL;
	if (vasprintf(&msg, fmt, ap) < 0)
		msg = NULL;
	va_end(ap);
	pthread_mutex_lock(&h->db_lock);
	int r = host_event_locked(h, sev, vm_id, user, type, msg ? msg : "");
	pthread_mutex_unlock(&h->db_lock);
	free(msg);
	return r;
}

bool host_event_wait(struct host *h, int64_t after_id, int timeout_ms)
{
	struct timespec until = host_deadline_in(timeout_ms);
	pthread_mutex_lock(&h->event_lock);
	while (h->last_event <= after_id)
		if (pthread_cond_timedwait(&h->event_cond, &h->event_lock, &until) != 0)
			break;
	bool more = h->last_event > after_id;
	pthread_mutex_unlock(&h->event_lock);
	return more;
}

int64_t host_event_last(struct host *h)
{
	pthread_mutex_lock(&h->event_lock);
	int64_t id = h->last_event;
	pthread_mutex_unlock(&h->event_lock);
	return id;
}

static bool event_visible(const struct host_access *a, int64_t vm, const char *folder)
{
	if (!a)
		return true;
	if (vm == 0 || !folder)   /* the host's, or of a VM no longer registered */
		return host_access_host(a) >= HOST_ROLE_READONLY;
	return host_access_vm(a, vm, folder) >= HOST_ROLE_READONLY;
}

int host_event_list(struct host *h, const struct host_event_query *q, const struct host_access *access, json_t **out)
{
	unsigned limit = q->limit ? q->limit : 100;
	if (limit > 10000)
		return vela_error(VELA_E_RANGE, "event list: limit %u is above 10000", limit);
	enum host_severity sev;
	if (q->severity && host_severity_parse(q->severity, &sev) < 0)
		return -VELA_E_INVAL;
	/* Newest first, stopping at `limit` visible ones; returned oldest first. */
	static const char sql[] =
		"SELECT e.id, e.time, e.severity, e.vm, e.user, e.type, e.message, v.folder FROM events e"
		" LEFT JOIN vms v ON v.id = e.vm"
		" WHERE (?1 = 0 OR e.vm = ?1) AND e.id > ?2 AND e.time >= ?3 AND (?4 IS NULL OR e.severity = ?4)"
		" ORDER BY e.id DESC";
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, sql, &st);
	json_t *a = json_array();
	if (r == 0) {
		sqlite3_bind_int64(st, 1, q->vm_id);
		sqlite3_bind_int64(st, 2, q->after_id);
		sqlite3_bind_int64(st, 3, q->since_ms);
		if (q->severity)
			sqlite3_bind_text(st, 4, q->severity, -1, SQLITE_TRANSIENT);
		int rc = SQLITE_DONE;
		while (json_array_size(a) < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
			if (!event_visible(access, sqlite3_column_int64(st, 3), (const char *)sqlite3_column_text(st, 7)))
				continue;
			json_array_insert_new(a, 0, host_db_row(st, 7));
		}
		if (json_array_size(a) < limit && rc != SQLITE_DONE)
			r = host_db_fail(h, "query events");
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0) {
		json_decref(a);
		return r;
	}
	*out = a;
	return 0;
}

/* ------------------------------------------------------------ VM rows */

void host_vm_row_clear(struct vm_row *v)
{
	free(v->name);
	free(v->folder);
	free(v->config);
	memset(v, 0, sizeof *v);
}

int host_vm_row_get(struct host *h, int64_t id, struct vm_row *v)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h, "SELECT name, folder, config FROM vms WHERE id = ?", &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		int rc = sqlite3_step(st);
		if (rc == SQLITE_ROW) {
			v->id = id;
			v->name = xstrdup((const char *)sqlite3_column_text(st, 0));
			v->folder = xstrdup((const char *)sqlite3_column_text(st, 1));
			v->config = xstrdup((const char *)sqlite3_column_text(st, 2));
		} else if (rc == SQLITE_DONE) {
			r = vela_error(VELA_E_NOTFOUND, "no VM with id %lld", (long long)id);
		} else {
			r = host_db_fail(h, "read VM");
		}
	}
	pthread_mutex_unlock(&h->db_lock);
	return r;
}

/* The power state as the supervisor reports it ("off" when none runs). */
json_t *host_vm_status(const char *config)
{
	if (!vmxsup_is_running(config))
		return json_pack("{s:s}", "state", vmxsup_is_suspended(config, NULL) ? "suspended" : "off");
	json_t *reply = NULL, *req = json_pack("{s:s}", "cmd", "status");
	int r = vmxsup_call(config, req, &reply, STATUS_TIMEOUT_MS);   /* the request stays ours */
	json_decref(req);
	if (r < 0) {
		/* Between its lock and its socket (starting or exiting). */
		return json_pack("{s:s, s:s}", "state", "unknown", "error", vela_errmsg());
	}
	json_object_del(reply, "ok");
	return reply;
}

static json_t *vm_json(int64_t id, const char *name, const char *folder, const char *config, json_t *status)
{
	json_t *o = json_pack("{s:I, s:s, s:s, s:s}", "id", (json_int_t)id, "name", name, "folder", folder, "config",
			      config);
	json_object_set(o, "state", json_object_get(status, "state"));
	return o;
}

int host_vm_lock(struct host *h, int64_t id, struct vm_row *v, struct vm_oplock **out)
{
	/* The row is read under the lock: an operation that waited for it
	 * must not act on a VM the one before it unregistered. */
	struct vm_oplock *l = host_oplock_of(h, id);
	pthread_mutex_lock(&l->lock);
	int r = host_vm_row_get(h, id, v);
	if (r < 0) {
		pthread_mutex_unlock(&l->lock);
		return r;
	}
	*out = l;
	return 0;
}

struct vm_oplock *host_oplock_of(struct host *h, int64_t id)
{
	pthread_mutex_lock(&h->oplocks_lock);
	struct vm_oplock *l = h->oplocks;
	while (l && l->id != id)
		l = l->next;
	if (!l) {
		l = xcalloc(1, sizeof *l);
		l->id = id;
		pthread_mutex_init(&l->lock, NULL);
		l->next = h->oplocks;
		h->oplocks = l;
	}
	pthread_mutex_unlock(&h->oplocks_lock);
	return l;
}

/* What velad last saw of a VM's power, for the next start's reconcile (a
 * killed velad has no chance to write it at exit). */
void host_remember_state_locked(struct host *h, int64_t id, const char *state)
{
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	if (host_db_prepare(h, "INSERT OR REPLACE INTO vm_state(vm, state) VALUES(?, ?)", &st) < 0)
		return;
	sqlite3_bind_int64(st, 1, id);
	sqlite3_bind_text(st, 2, state ? state : "unknown", -1, SQLITE_TRANSIENT);
	sqlite3_step(st);
	atomic_fetch_add(&h->generation, 1);
}

void host_remember_state(struct host *h, int64_t id, json_t *status)
{
	pthread_mutex_lock(&h->db_lock);
	host_remember_state_locked(h, id, json_string_value(json_object_get(status, "state")));
	pthread_mutex_unlock(&h->db_lock);
}

/* ----------------------------------------------------------- inventory */

bool host_name_ok(const char *s, size_t max)
{
	if (!s || !*s || strlen(s) > max)
		return false;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++)
		if (*p < 0x20 || *p == 0x7f)
			return false;
	return true;
}

bool host_folder_ok(const char *s)
{
	/* "/", "/a", "/a/b": absolute, no empty, "." or ".." parts. */
	if (!host_name_ok(s, 1024) || s[0] != '/')
		return false;
	if (strcmp(s, "/") == 0)
		return true;
	for (const char *p = s; *p;) {
		const char *part = p + 1, *end = strchr(part, '/');
		size_t n = end ? (size_t)(end - part) : strlen(part);
		if (n == 0 || (n == 1 && part[0] == '.') || (n == 2 && part[0] == '.' && part[1] == '.'))
			return false;
		p = part + n;
	}
	return true;
}

int host_vm_register(struct host *h, const char *user, const char *config, const char *name, const char *folder,
		     json_t **out)
{
	if (!config || !*config)
		return vela_error(VELA_E_INVAL, "register: no configuration file given");
	if (name && !host_name_ok(name, 255))
		return vela_error(VELA_E_BADNAME, "register: the name must be 1-255 printable characters");
	if (folder && !host_folder_ok(folder))
		return vela_error(VELA_E_BADNAME, "register: bad folder \"%.100s\" (\"/\" or \"/a/b\", no \".\" or \"..\")",
				  folder);
	CLEANUP_FREE char *path = NULL;
	int r = vela_resolve_path(config, "/", &path);
	if (r < 0)
		return vela_error_context(r, "register %s", config);
	CLEANUP_FREE char *real = realpath(path, NULL);
	if (!real)
		return vela_error_errno(errno, "register %s", path);
	struct stat stbuf;
	if (stat(real, &stbuf) < 0 || !S_ISREG(stbuf.st_mode))
		return vela_error(VELA_E_INVAL, "register %s: not a regular file", real);
	struct vmx_file *f = NULL;
	if ((r = vmx_file_load(real, &f)) < 0)
		return vela_error_context(r, "register");
	CLEANUP_FREE char *display = xstrdup(name ? name : vmx_get(f, "displayName") ? vmx_get(f, "displayName") : "");
	vmx_file_free(f);
	if (!*display) {
		free(display);
		display = path_basename(real);
	}
	if (!host_name_ok(display, 255))
		return vela_error(VELA_E_BADNAME, "register: the name must be 1-255 printable characters");
	if (!folder)
		folder = "/";

	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int64_t id = 0;
	r = host_db_prepare(h, "INSERT INTO vms(name, folder, config, created) VALUES(?,?,?,?)", &st);
	if (r == 0) {
		sqlite3_bind_text(st, 1, display, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 2, folder, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 3, real, -1, SQLITE_STATIC);
		sqlite3_bind_int64(st, 4, time_real_ms());
		int rc = sqlite3_step(st);
		if (rc == SQLITE_CONSTRAINT)
			r = vela_error(VELA_E_EXISTS, "%s is already registered", real);
		else if (rc != SQLITE_DONE)
			r = host_db_fail(h, "register");
		else
			id = sqlite3_last_insert_rowid(h->db);
	}
	if (r == 0) {
		atomic_fetch_add(&h->generation, 1);
		r = host_event_locked(h, HOST_AUDIT, id, user, "vm.registered", real);
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r < 0)
		return r;
	json_t *status = host_vm_status(real);
	host_remember_state(h, id, status);
	*out = vm_json(id, display, folder, real, status);
	json_decref(status);
	return 0;
}

static bool vm_dir_name_ok(const char *s)
{
	if (!s || !*s || strlen(s) > 80 || s[0] == '.' || s[0] == ' ')
		return false;
	for (const char *c = s; *c; c++)
		if (!(*c == '_' || *c == '-' || *c == '.' || *c == ' ' || (*c >= 'a' && *c <= 'z') ||
		      (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9')))
			return false;
	return true;
}

/* The disks of a spec into .vmx keys and image files (made in dir). */
int host_create_disks(struct vmx_file *f, const char *dir, const char *name, json_t *disks, struct host_task *t,
		      json_t *created)
{
	static const struct { const char *bus, *ctrl_key, *dev; int slots, reserved; enum vdisk_adapter adapter; } buses[] = {
		{ "scsi", "scsi0", "lsilogic", VMX_MAX_SCSI_UNIT, 7, VDISK_ADAPTER_LSILOGIC },   /* 7: the controller's id */
		{ "virtio", "virtio0", NULL, VMX_MAX_VIRTIO_UNIT, -1, VDISK_ADAPTER_VIRTIO },
		{ "ide", "ide0", NULL, VMX_MAX_IDE_UNIT, -1, VDISK_ADAPTER_IDE },   /* ide1 is the CD-ROM's */
		{ "sata", "sata0", NULL, VMX_MAX_SATA_UNIT, -1, VDISK_ADAPTER_IDE },
	};
	size_t i;
	json_t *d;
	if (disks && (!json_is_array(disks) || json_array_size(disks) > 4))
		return vela_error(VELA_E_INVAL, "\"disks\" is a list of at most 4 disks");
	json_array_foreach(disks, i, d) {
		json_t *jsize = json_object_get(d, "size");
		const char *type = json_string_value(json_object_get(d, "type"));
		const char *bus = json_string_value(json_object_get(d, "bus"));
		uint64_t size = 0;
		int r = 0;
		if (!json_is_object(d))
			return vela_error(VELA_E_INVAL, "disk %zu is not an object", i);
		if (json_is_integer(jsize) && json_integer_value(jsize) > 0)
			size = (uint64_t)json_integer_value(jsize);
		else if (!json_is_string(jsize) || (r = parse_size(json_string_value(jsize), &size)) < 0)
			return vela_error(VELA_E_INVAL, "disk %zu needs a size (bytes, or \"8g\")", i);
		if (size < 1024 * 1024 || size > (64ull << 40))
			return vela_error(VELA_E_RANGE, "disk %zu: size from 1 MiB to 64 TiB", i);
		size_t b = 0;
		while (b < ARRAY_SIZE(buses) && strcmp(buses[b].bus, bus ? bus : "scsi") != 0)
			b++;
		if (b == ARRAY_SIZE(buses))
			return vela_error(VELA_E_INVAL, "disk %zu: bus scsi, virtio, ide or sata", i);
		struct vdisk_create_opts o = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .size = size,
					       .adapter = buses[b].adapter };
		if (type && (r = vdisk_type_parse(type, &o.type)) < 0)
			return vela_error_context(r, "disk %zu", i);
		const char *ext = o.type == VDISK_TYPE_QCOW2 ? "qcow2" :
				  o.type == VDISK_TYPE_RAW ? "img" :
				  (o.type == VDISK_TYPE_VHD_DYNAMIC || o.type == VDISK_TYPE_VHD_FIXED) ? "vhd" : "vmdk";
		/* The first free unit of the bus (a VM may have disks already). */
		char key[64];
		int unit = 0;
		for (; unit < buses[b].slots; unit++) {
			snprintf(key, sizeof key, "%s:%d.present", buses[b].ctrl_key, unit);
			bool present = false;
			if (unit != buses[b].reserved && (!vmx_get(f, key) || parse_bool(vmx_get(f, key), &present) < 0 || !present))
				break;
		}
		if (unit >= buses[b].slots)
			return vela_error(VELA_E_LIMIT, "disk %zu: no free unit on %s", i, buses[b].ctrl_key);
		/* <name>.<ext> for the first disk, <name>_<i>.<ext> for the others,
		 * counting on while a file has the name. */
		CLEANUP_FREE char *file = NULL, *path = NULL;
		for (unsigned n = (unsigned)i;; n++) {
			free(file);
			free(path);
			file = n == 0 ? xasprintf("%s.%s", name, ext) : xasprintf("%s_%u.%s", name, n, ext);
			path = path_join(dir, file);
			struct stat st;
			if (lstat(path, &st) < 0)
				break;
		}
		if (host_task_cancelled(t))
			return vela_error(VELA_E_CANCELED, "cancelled");
		host_task_progress(t, (unsigned)(i * 90 / json_array_size(disks)));
		if ((r = vdisk_create(path, &o)) < 0)
			return vela_error_context(r, "disk %zu", i);
		if (created)
			json_array_append_new(created, json_string(path));
		if (strcmp(buses[b].bus, "scsi") == 0 || strcmp(buses[b].bus, "sata") == 0) {
			/* Controllers with a key of their own (virtio and IDE have none). */
			snprintf(key, sizeof key, "%s.present", buses[b].ctrl_key);
			vmx_set(f, key, "TRUE");
		}
		snprintf(key, sizeof key, "%s.virtualDev", buses[b].ctrl_key);
		if (buses[b].dev && !vmx_get(f, key))
			vmx_set(f, key, buses[b].dev);
		snprintf(key, sizeof key, "%s:%d.present", buses[b].ctrl_key, unit);
		vmx_set(f, key, "TRUE");
		snprintf(key, sizeof key, "%s:%d.fileName", buses[b].ctrl_key, unit);
		vmx_set(f, key, file);
	}
	return 0;
}

int host_vm_create(struct host *h, const char *user, const struct host_vm_spec *sp, struct host_task *t, json_t **out)
{
	if (!vm_dir_name_ok(sp->name))
		return vela_error(VELA_E_BADNAME, "create: the name must be 1-80 letters, digits, spaces, '.', '_' or '-'"
						  " (it names the VM's folder)");
	if (sp->memsize_mb < 16 || sp->memsize_mb > 1048576 || sp->vcpus < 1 || sp->vcpus > 64)
		return vela_error(VELA_E_RANGE, "create: memsize 16 MiB to 1 TiB, vcpus 1 to 64");
	if (sp->folder && !host_folder_ok(sp->folder))
		return vela_error(VELA_E_BADNAME, "create: bad inventory folder \"%.100s\"", sp->folder);
	if (sp->guest_os && !host_name_ok(sp->guest_os, 64))
		return vela_error(VELA_E_INVAL, "create: bad guestOS");
	CLEANUP_FREE char *dir = NULL;
	int r = host_ds_path(h, sp->datastore ? sp->datastore : DEFAULT_DATASTORE, sp->name, &dir);
	if (r < 0)
		return vela_error_context(r, "create");
	if (mkdir(dir, 0755) < 0)
		return errno == EEXIST ? vela_error(VELA_E_EXISTS, "create: %s already exists", dir)
				       : vela_error_errno(errno, "create: %s", dir);
	struct vmx_file *f = NULL;
	CLEANUP_FREE char *vmx = xasprintf("%s/%s.vmx", dir, sp->name);
	r = vmx_file_parse(vmx, "", 0, &f);
	if (r == 0) {
		char num[32];
		vmx_set(f, "config.version", "8");
		vmx_set(f, "virtualHW.version", "4");
		vmx_set(f, "displayName", sp->name);
		vmx_set(f, "guestOS", sp->guest_os ? sp->guest_os : "other-64");
		snprintf(num, sizeof num, "%d", sp->memsize_mb);
		vmx_set(f, "memsize", num);
		snprintf(num, sizeof num, "%d", sp->vcpus);
		vmx_set(f, "numvcpus", num);
		if (sp->nic) {
			vmx_set(f, "ethernet0.present", "TRUE");
			vmx_set(f, "ethernet0.connectionType", "nat");
		}
		if (sp->cdrom) {
			vmx_set(f, "ide1:0.present", "TRUE");
			vmx_set(f, "ide1:0.deviceType", "cdrom-image");
			vmx_set(f, "ide1:0.fileName", sp->cdrom);
		}
		r = host_create_disks(f, dir, sp->name, sp->disks, t, NULL);
		if (r < 0)
			vela_error_context(r, "create");
	}
	if (r == 0)
		r = vmx_file_save(f, vmx);
	vmx_file_free(f);
	if (r == 0)
		r = host_vm_register(h, user, vmx, NULL, sp->folder, out);
	if (r < 0) {
		/* Nothing stays: the folder is ours (made above), so everything
		 * in it goes (extent files of split disks too), then the folder. */
		CLEANUP_FREE char *msg = xstrdup(vela_errmsg());
		DIR *d = opendir(dir);
		struct dirent *e;
		while (d && (e = readdir(d)))
			if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
				unlinkat(dirfd(d), e->d_name, 0);
		if (d)
			closedir(d);
		rmdir(dir);
		vela_error(-r, "%s", msg);
	} else {
		host_event(h, HOST_AUDIT, json_integer_value(json_object_get(*out, "id")), user, "vm.created", "%s", vmx);
	}
	return r;
}

int host_vm_unregister(struct host *h, const char *user, int64_t id)
{
	json_t *out = NULL;
	int r = host_vm_delete(h, user, id, false, NULL, &out);
	json_decref(out);
	return r;
}

/* Both lists: each VM with its cached state and, only while a guest runs
 * (a VM on a question has none), what the guest told. */
#define VM_LIST_FROM                                                                                     \
	" FROM vms v LEFT JOIN vm_state s ON s.vm = v.id"                                                \
	" LEFT JOIN vm_live l ON l.vm = v.id AND COALESCE(s.state, 'off') NOT IN ('off', 'suspended', 'stuck')" \
	" ORDER BY v.id"

int host_vm_list(struct host *h, json_t **out)
{
	/* States come from the cache the refresher keeps (and power
	 * operations update at once): a list costs one query, however many
	 * VMs run.  What the guest told (heartbeat, OS, since when) shows only
	 * while it runs, even before the refresher has seen it stop. */
	return host_db_query(h,
			  "SELECT v.id, v.name, v.folder, v.config, COALESCE(s.state, 'off') AS state,"
			  " COALESCE(l.heartbeat, 'none') AS heartbeat, l.guest_os, l.on_since"
			  VM_LIST_FROM,
			  out);
}

int host_vm_list_text(struct host *h, const struct host_access *access, struct strbuf *out)
{
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	int r = host_db_prepare(h,
			"SELECT v.id, v.name, v.folder, v.config, COALESCE(s.state, 'off'), COALESCE(l.heartbeat, 'none'),"
			" l.guest_os, l.on_since"
			VM_LIST_FROM,
			&st);
	int rc = SQLITE_DONE;
	bool first = true;
	strbuf_puts(out, "{\"ok\":true,\"vms\":[");
	while (r == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(st, 0);
		const char *folder = (const char *)sqlite3_column_text(st, 2);
		enum host_role role = access ? host_access_vm(access, id, folder) : HOST_ROLE_ADMIN;
		if (role < HOST_ROLE_READONLY)
			continue;
		char head[48];   /* snprintf into the stack: no allocation per row */
		int n = snprintf(head, sizeof head, "%s{\"id\":%lld,\"name\":", first ? "" : ",", (long long)id);
		strbuf_append(out, head, (size_t)n);
		strbuf_json_string(out, (const char *)sqlite3_column_text(st, 1));
		strbuf_puts(out, ",\"folder\":");
		strbuf_json_string(out, folder);
		strbuf_puts(out, ",\"config\":");
		strbuf_json_string(out, (const char *)sqlite3_column_text(st, 3));
		strbuf_puts(out, ",\"state\":");
		strbuf_json_string(out, (const char *)sqlite3_column_text(st, 4));
		strbuf_puts(out, ",\"heartbeat\":");
		strbuf_json_string(out, (const char *)sqlite3_column_text(st, 5));
		if (sqlite3_column_type(st, 6) == SQLITE_TEXT) {
			strbuf_puts(out, ",\"guest_os\":");
			strbuf_json_string(out, (const char *)sqlite3_column_text(st, 6));
		}
		if (sqlite3_column_type(st, 7) == SQLITE_INTEGER) {
			n = snprintf(head, sizeof head, ",\"on_since\":%lld", (long long)sqlite3_column_int64(st, 7));
			strbuf_append(out, head, (size_t)n);
		}
		strbuf_puts(out, ",\"role\":\"");
		strbuf_puts(out, host_role_name(role));
		strbuf_puts(out, "\"}");
		first = false;
	}
	if (r == 0 && rc != SQLITE_DONE)
		r = host_db_fail(h, "list VMs");
	pthread_mutex_unlock(&h->db_lock);
	strbuf_puts(out, "]}");
	return r;
}

uint64_t host_generation(struct host *h)
{
	return atomic_load(&h->generation);
}

int host_vm_folder(struct host *h, int64_t id, char **folder)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r == 0) {
		*folder = v.folder;
		v.folder = NULL;
	}
	host_vm_row_clear(&v);
	return r;
}

int host_vm_get(struct host *h, int64_t id, json_t **out)
{
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	json_t *status = host_vm_status(v.config);
	json_t *o = vm_json(id, v.name, v.folder, v.config, status);
	json_object_set_new(o, "status", status);
	json_object_set_new(o, "settings", host_vm_settings(v.config));
	host_vm_row_clear(&v);
	*out = o;
	return 0;
}

/* ------------------------------------------------------------- power */

static int power_locked(struct host *h, const struct vm_row *v, const char *op, const char *mode, json_t **reply)
{
	/* start of a suspended VM resumes it. */
	if (strcmp(op, "start") == 0 || (strcmp(op, "resume") == 0 && vmxsup_is_suspended(v->config, NULL)))
		return vmxsup_spawn(v->config, h->vmx_binary, reply, h->power_timeout_ms);
	if (strcmp(op, "resume") == 0)
		return vela_error(VELA_E_BADSTATE, "VM %lld (%s) is not suspended", (long long)v->id, v->name);
	if (strcmp(op, "stop") == 0 && !vmxsup_is_running(v->config) && vmxsup_is_suspended(v->config, NULL))
		return vmxsup_discard_suspended(v->config);   /* powering off discards the saved state */
	json_t *req = json_pack("{s:s}", "cmd", op);
	if (strcmp(op, "stop") == 0 || strcmp(op, "reset") == 0) {
		enum vm_power_mode pm;
		int r = vm_power_mode_parse(mode ? mode : "trysoft", &pm);
		if (r < 0) {
			json_decref(req);
			return r;
		}
		json_object_set_new(req, "mode", json_string(vm_power_mode_name(pm)));
	} else if (strcmp(op, "pause") != 0 && strcmp(op, "unpause") != 0 && strcmp(op, "suspend") != 0) {
		json_decref(req);
		return vela_error(VELA_E_INVAL,
				  "unknown power operation \"%s\" (start, stop, reset, pause, unpause, suspend, resume)", op);
	}
	if (!vmxsup_is_running(v->config)) {
		json_decref(req);
		return vela_error(VELA_E_BADSTATE, "VM %lld (%s) is %s", (long long)v->id, v->name,
				  vmxsup_is_suspended(v->config, NULL) ? "suspended" : "powered off");
	}
	int r = vmxsup_call(v->config, req, reply, h->power_timeout_ms + 60000);
	json_decref(req);
	return r;
}

int host_vm_power(struct host *h, const char *user, int64_t id, const char *op, const char *mode, struct host_task *t,
		  json_t **out)
{
	if (!op)
		return vela_error(VELA_E_INVAL, "power: no operation given");
	struct vm_row v = { 0 };
	struct vm_oplock *l = NULL;
	int r = host_vm_lock(h, id, &v, &l);
	if (r < 0)
		return r;
	json_t *reply = NULL;
	/* A task cancelled while it waited behind another operation on the
	 * VM never starts. */
	if (host_task_cancelled(t))
		r = vela_error(VELA_E_CANCELED, "%s of VM %lld cancelled before it began", op, (long long)id);
	else
		r = power_locked(h, &v, op, mode, &reply);
	json_decref(reply);
	if (r == -VELA_E_INVAL || r == -VELA_E_CANCELED)
		;   /* a malformed request changed nothing and is no event */
	else if (r < 0)
		/* A refusal of the state machine is a warning; a failure an error. */
		host_event(h, r == -VELA_E_BADSTATE ? HOST_WARNING : HOST_ERROR, id, user, "vm.power.failed", "%s%s%s: %s",
			   op, mode ? " " : "", mode ? mode : "", vela_errmsg());
	else
		host_event(h, HOST_AUDIT, id, user, "vm.power", "%s%s%s", op, mode ? " " : "", mode ? mode : "");
	json_t *status = host_vm_status(v.config);
	host_remember_state(h, id, status);
	pthread_mutex_unlock(&l->lock);
	host_vm_row_clear(&v);
	if (r < 0) {
		json_decref(status);
		return r;
	}
	*out = status;
	return 0;
}

int host_vm_answer(struct host *h, const char *user, int64_t id, const char *choice, json_t **out)
{
	if (!choice || !*choice)
		return vela_error(VELA_E_INVAL, "answer: no choice given");
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	json_t *reply = NULL, *req = json_pack("{s:s, s:s}", "cmd", "answer", "choice", choice);
	r = vmxsup_call(v.config, req, &reply, h->power_timeout_ms);
	json_decref(req);
	json_decref(reply);
	if (r == 0)
		host_event(h, HOST_AUDIT, id, user, "vm.answered", "%s", choice);
	else
		vela_error_context(r, "VM %lld (%s)", (long long)id, v.name);
	if (r == 0) {
		*out = host_vm_status(v.config);
		host_remember_state(h, id, *out);
	}
	host_vm_row_clear(&v);
	return r;
}

/* ----------------------------------------------- autostart, autostop */

int host_autostart_set(struct host *h, const char *user, int64_t id, const struct host_autostart *a, json_t **out)
{
	if (a->order < 0 || a->order > 9999 || a->delay_s < 0 || a->delay_s > 3600)
		return vela_error(VELA_E_RANGE, "autostart: order 0-9999, delay 0-3600 seconds");
	const char *stop = a->stop ? a->stop : "soft";
	if (strcmp(stop, "soft") != 0 && strcmp(stop, "hard") != 0 && strcmp(stop, "suspend") != 0 &&
	    strcmp(stop, "none") != 0)
		return vela_error(VELA_E_INVAL, "autostart: stop must be soft, hard, suspend or none, not \"%.20s\"", stop);
	struct vm_row v = { 0 };
	int r = host_vm_row_get(h, id, &v);
	if (r < 0)
		return r;
	pthread_mutex_lock(&h->db_lock);
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	r = host_db_prepare(h, "INSERT OR REPLACE INTO autostart(vm, enabled, ord, delay, stop) VALUES(?,?,?,?,?)", &st);
	if (r == 0) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_int(st, 2, a->enabled);
		sqlite3_bind_int(st, 3, a->order);
		sqlite3_bind_int(st, 4, a->delay_s);
		sqlite3_bind_text(st, 5, stop, -1, SQLITE_STATIC);
		if (sqlite3_step(st) != SQLITE_DONE)
			r = host_db_fail(h, "autostart");
	}
	if (r == 0) {
		CLEANUP_FREE char *msg = xasprintf("autostart %s, order %d, delay %d s, stop %s", a->enabled ? "on" : "off",
						   a->order, a->delay_s, stop);
		r = host_event_locked(h, HOST_AUDIT, id, user, "vm.autostart.set", msg);
	}
	pthread_mutex_unlock(&h->db_lock);
	if (r == 0)
		*out = json_pack("{s:I, s:s, s:b, s:i, s:i, s:s}", "vm", (json_int_t)id, "name", v.name, "enabled", a->enabled,
				 "order", a->order, "delay", a->delay_s, "stop", stop);
	host_vm_row_clear(&v);
	return r;
}

int host_autostart_list(struct host *h, json_t **out)
{
	return host_db_query(h,
			  "SELECT a.vm, v.name, a.enabled, a.ord AS \"order\", a.delay, a.stop FROM autostart a"
			  " JOIN vms v ON v.id = a.vm ORDER BY a.ord, a.vm",
			  out);
}

static int autostart_task(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	(void)arg;
	json_t *list = NULL;
	int r = host_autostart_list(h, &list);
	if (r < 0)
		return r;
	size_t i, started = 0, n = json_array_size(list);
	json_t *e;
	json_array_foreach(list, i, e) {
		host_task_progress(t, (unsigned)(i * 100 / (n ? n : 1)));
		if (host_task_cancelled(t))
			break;
		if (!json_integer_value(json_object_get(e, "enabled")))
			continue;
		int64_t id = json_integer_value(json_object_get(e, "vm"));
		json_t *status = NULL;
		CLEANUP_FREE char *folder = NULL;
		if (host_vm_folder(h, id, &folder) < 0)
			continue;   /* unregistered meanwhile */
		r = host_vm_power(h, "autostart", id, "start", NULL, NULL, &status);
		json_decref(status);
		if (r == -VELA_E_BADSTATE)
			continue;   /* already on: no delay owed */
		if (r < 0)
			vela_log(VELA_LOG_WARN, "autostart of VM %lld: %s", (long long)id, vela_errmsg());
		else
			started++;
		/* The delay lets this VM's services come up before the next
		 * one needs them; it ends early on cancel (velad stopping). */
		int64_t until = time_mono_ms() + json_integer_value(json_object_get(e, "delay")) * 1000;
		while (time_mono_ms() < until && !host_task_cancelled(t))
			usleep(50 * 1000);
	}
	json_decref(list);
	if (host_task_cancelled(t))
		return vela_error(VELA_E_CANCELED, "autostart cancelled after %zu VMs", started);
	*result = json_pack("{s:I}", "started", (json_int_t)started);
	return 0;
}

void host_autostart_run(struct host *h)
{
	struct host_task *t = NULL;
	if (host_task_begin(h, "autostart", 0, "host.autostart", "", true, &t) < 0) {
		vela_log(VELA_LOG_ERROR, "autostart: %s", vela_errmsg());
		return;
	}
	h->autostart_task = host_task_id(t);
	if (host_task_spawn(h, t, autostart_task, NULL, NULL) < 0)
		vela_log(VELA_LOG_ERROR, "autostart: %s", vela_errmsg());
}

int host_autostop_run(struct host *h, const char *user, struct host_task *t)
{
	/* Every registered VM, in reverse start order; those without a
	 * setting last, stopped softly. */
	json_t *vms = NULL;
	int r = host_db_query(h,
			   "SELECT v.id, COALESCE(a.stop, 'soft') AS stop FROM vms v LEFT JOIN autostart a ON a.vm = v.id"
			   " ORDER BY a.ord IS NULL, a.ord DESC, v.id DESC",
			   &vms);
	if (r < 0)
		return r;
	/* An autostart still under way would start VMs behind our back. */
	json_t *t_as = NULL;
	if (h->autostart_task && host_task_cancel(h, user, h->autostart_task) == 0)
		host_task_wait(h, h->autostart_task, h->power_timeout_ms + 10000, &t_as);
	json_decref(t_as);
	host_event(h, HOST_INFO, 0, user, "host.autostop", "stopping the running VMs");
	size_t i, failed = 0;
	json_t *e;
	json_array_foreach(vms, i, e) {
		int64_t id = json_integer_value(json_object_get(e, "id"));
		const char *stop = json_string_value(json_object_get(e, "stop"));
		struct vm_row v = { 0 };
		if (strcmp(stop, "none") == 0 || host_vm_row_get(h, id, &v) < 0)
			continue;
		bool running = vmxsup_is_running(v.config);
		host_vm_row_clear(&v);
		if (!running)
			continue;
		json_t *status = NULL;
		host_task_progress(t, (unsigned)(i * 100 / json_array_size(vms)));
		if (strcmp(stop, "suspend") == 0)
			r = host_vm_power(h, user, id, "suspend", NULL, NULL, &status);
		else
			r = host_vm_power(h, user, id, "stop", strcmp(stop, "hard") == 0 ? "hard" : "trysoft", NULL, &status);
		json_decref(status);
		failed += r < 0;
	}
	json_decref(vms);
	if (failed)
		return vela_error(VELA_E_BUSY, "autostop: %zu VMs did not stop", failed);
	return 0;
}

/* ---------------------------------------------------------------- host */

int host_info(struct host *h, json_t **out)
{
	json_t *vms = NULL, *ds = NULL;
	int r = host_vm_list(h, &vms);
	if (r == 0)
		r = host_datastore_list(h, &ds);
	if (r < 0) {
		json_decref(vms);
		return r;
	}
	size_t i, running = 0;
	json_t *vm;
	json_array_foreach(vms, i, vm)
		running += strcmp(json_string_value(json_object_get(vm, "state")), "off") != 0;
	char name[256] = "";
	gethostname(name, sizeof name - 1);
	*out = json_pack("{s:s, s:s, s:s, s:I, s:I, s:o}", "name", name, "version", VELA_VERSION, "home", h->home,
			 "vms", (json_int_t)json_array_size(vms), "running", (json_int_t)running, "datastores", ds);
	json_decref(vms);
	return 0;
}

/* --------------------------------------------------------- open, close */

/*
 * Compare every VM's live power state with the cache (vm_state) and record
 * the differences.  At velad's start this finds the VMs still running
 * (their supervisors never depended on velad) and those that went off while
 * nobody watched; afterwards, state changes made outside velad (the guest
 * shut down, `vela vm stop FILE.vmx`, QEMU died).
 */
/*
 * Keep vm_live in step with a VM's status: the agent's heartbeat (and its
 * loss and recovery as events), the guest's OS as the agent tells it, and
 * when the VM powered on.  Written only when something changed, so the
 * list's cache lives on.
 */
static void remember_live(struct host *h, int64_t id, json_t *row, json_t *status)
{
	const char *state = json_string_value(json_object_get(status, "state"));
	if (!state || strcmp(state, "unknown") == 0)
		return;
	json_t *guest = json_object_get(status, "guest");
	const char *hb = json_string_value(json_object_get(guest, "heartbeat"));
	const char *os = json_string_value(json_object_get(json_object_get(guest, "info"), "os"));
	json_t *up = json_object_get(status, "uptime_s");
	bool running = strcmp(state, "off") != 0 && strcmp(state, "suspended") != 0;
	if (!hb || !running)
		hb = "none";
	int64_t since = json_is_integer(up) ? time_real_ms() - json_integer_value(up) * 1000 : 0;
	const char *was_hb = json_string_value(json_object_get(row, "heartbeat"));
	const char *was_os = json_string_value(json_object_get(row, "guest_os"));
	json_t *was_since = json_object_get(row, "on_since");
	bool same_since = json_is_integer(was_since) ? since && llabs(json_integer_value(was_since) - since) < 5000 : !since;
	bool same_os = (was_os && os) ? strcmp(was_os, os) == 0 : (!was_os && !os) || !running;
	if (was_hb && strcmp(was_hb, hb) == 0 && same_os && same_since)
		return;
	pthread_mutex_lock(&h->db_lock);
	if (was_hb && strcmp(was_hb, "ok") == 0 && strcmp(hb, "lost") == 0)
		host_event_locked(h, HOST_WARNING, id, NULL, "vm.heartbeat.lost", "the guest agent's heartbeat is lost");
	else if (was_hb && strcmp(was_hb, "lost") == 0 && strcmp(hb, "ok") == 0)
		host_event_locked(h, HOST_INFO, id, NULL, "vm.heartbeat.recovered", "the guest agent's heartbeat is back");
	CLEANUP_STMT sqlite3_stmt *st = NULL;
	if (host_db_prepare(h, "INSERT OR REPLACE INTO vm_live(vm, heartbeat, guest_os, on_since) VALUES(?, ?, ?, ?)",
			    &st) == 0) {
		sqlite3_bind_int64(st, 1, id);
		sqlite3_bind_text(st, 2, hb, -1, SQLITE_TRANSIENT);
		if (running && os)
			sqlite3_bind_text(st, 3, os, -1, SQLITE_TRANSIENT);
		else if (running && was_os)
			sqlite3_bind_text(st, 3, was_os, -1, SQLITE_TRANSIENT);
		if (running && since)
			sqlite3_bind_int64(st, 4, same_since && json_is_integer(was_since) ? json_integer_value(was_since) : since);
		sqlite3_step(st);
		atomic_fetch_add(&h->generation, 1);
	}
	pthread_mutex_unlock(&h->db_lock);
}

static void probe_states(struct host *h, bool at_start)
{
	json_t *vms = NULL;
	if (host_vm_list(h, &vms) < 0)
		return;
	size_t i;
	json_t *vm;
	json_array_foreach(vms, i, vm) {
		int64_t id = json_integer_value(json_object_get(vm, "id"));
		const char *was = json_string_value(json_object_get(vm, "state"));
		json_t *status = host_vm_status(json_string_value(json_object_get(vm, "config")));
		const char *now = json_string_value(json_object_get(status, "state"));
		remember_live(h, id, vm, status);
		if (strcmp(now, "unknown") == 0 || (!at_start && strcmp(was, now) == 0)) {
			json_decref(status);   /* starting or exiting right now: next round */
			continue;
		}
		/* A power operation of velad's own is under way: it records the
		 * outcome itself. */
		struct vm_oplock *l = host_oplock_of(h, id);
		if (!at_start && pthread_mutex_trylock(&l->lock) != 0) {
			json_decref(status);
			continue;
		}
		pthread_mutex_lock(&h->db_lock);
		if (at_start && strcmp(was, "off") != 0 && strcmp(now, "off") == 0)
			host_event_locked(h, HOST_WARNING, id, NULL, "vm.off.unattended", "powered off while velad was not running");
		else if (at_start && strcmp(now, "off") != 0)
			host_event_locked(h, HOST_INFO, id, NULL, "vm.reattached", now);
		else if (!at_start && strcmp(now, "off") == 0)
			host_event_locked(h, HOST_INFO, id, NULL, "vm.state", "powered off (by the guest, or outside velad)");
		else if (!at_start) {
			CLEANUP_FREE char *msg = xasprintf("%s (was %s)", now, was);
			host_event_locked(h, HOST_INFO, id, NULL, "vm.state", msg);
		}
		host_remember_state_locked(h, id, now);
		pthread_mutex_unlock(&h->db_lock);
		if (!at_start)
			pthread_mutex_unlock(&l->lock);
		json_decref(status);
	}
	json_decref(vms);
}

static void *periodic_thread(void *arg)
{
	struct host_periodic *p = arg;
	struct host *h = p->h;
	pthread_mutex_lock(&h->refresh_lock);
	while (!h->stopping) {
		struct timespec until = host_deadline_in(p->interval_ms);
		pthread_cond_timedwait(&p->cond, &h->refresh_lock, &until);
		if (h->stopping)
			break;
		pthread_mutex_unlock(&h->refresh_lock);
		p->work(h);
		pthread_mutex_lock(&h->refresh_lock);
	}
	pthread_mutex_unlock(&h->refresh_lock);
	return NULL;
}

static int periodic_start(struct host *h, struct host_periodic *p, int interval_ms, void (*work)(struct host *h),
			  const char *what)
{
	if (interval_ms <= 0)
		return 0;
	*p = (struct host_periodic){ .h = h, .interval_ms = interval_ms, .work = work };
	host_cond_init(&p->cond);
	if (pthread_create(&p->tid, NULL, periodic_thread, p) != 0) {
		pthread_cond_destroy(&p->cond);
		return vela_error(VELA_E_SYSTEM, "host: cannot start the %s", what);
	}
	p->running = true;
	return 0;
}

/* Caller set h->stopping and woke the thread. */
static void periodic_join(struct host_periodic *p)
{
	if (!p->running)
		return;
	pthread_join(p->tid, NULL);
	pthread_cond_destroy(&p->cond);
	p->running = false;
}

static void refresh(struct host *h)
{
	probe_states(h, false);
	host_ds_check_space(h);
	host_backup_run_due(h);
}

int host_open(const struct host_opts *opts, struct host **out)
{
	struct host *h = xcalloc(1, sizeof *h);
	h->home = xstrdup(opts->home ? opts->home : vela_home());
	h->vmx_binary = opts->vmx_binary ? xstrdup(opts->vmx_binary) : NULL;
	h->power_timeout_ms = opts->power_timeout_ms ? opts->power_timeout_ms : 120000;
	h->refresh_ms = opts->refresh_ms ? (opts->refresh_ms < 0 ? 0 : opts->refresh_ms) : 1000;
	pthread_mutex_init(&h->db_lock, NULL);
	pthread_mutex_init(&h->refresh_lock, NULL);
	pthread_mutex_init(&h->event_lock, NULL);
	host_cond_init(&h->event_cond);
	pthread_mutex_init(&h->oplocks_lock, NULL);
	pthread_mutex_init(&h->task_lock, NULL);
	host_cond_init(&h->task_cond);
	h->low_space_percent = opts->low_space_percent > 0 ? opts->low_space_percent : 10;
	h->stats_interval_ms = opts->stats_interval_ms ? (opts->stats_interval_ms < 0 ? 0 : opts->stats_interval_ms) : 20000;
	h->stats_keep_ms = opts->stats_keep_ms > 0 ? opts->stats_keep_ms : 3600 * 1000;
	CLEANUP_FREE char *ds = path_join(h->home, "datastores/" DEFAULT_DATASTORE);
	CLEANUP_FREE char *dbpath = path_join(h->home, "host.db");
	int r = mkdir_p(h->home, 0755);
	if (r == 0) {
		CLEANUP_FREE char *dsdir = host_datastores_dir(h);
		struct stat st;
		/* First start: the default local datastore. */
		if (stat(dsdir, &st) < 0)
			r = mkdir_p(ds, 0755);
	}
	if (r < 0) {
		host_close(h);
		return vela_error_context(r, "host %s", opts->home ? opts->home : vela_home());
	}
	if (sqlite3_open_v2(dbpath, &h->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) !=
	    SQLITE_OK) {
		r = vela_error(VELA_E_IO, "open %s: %s", dbpath, h->db ? sqlite3_errmsg(h->db) : "out of memory");
		host_close(h);
		return r;
	}
	sqlite3_busy_timeout(h->db, 5000);
	char *err = NULL;
	if (sqlite3_exec(h->db, schema, NULL, NULL, &err) != SQLITE_OK) {
		r = vela_error(VELA_E_IO, "%s: schema: %s", dbpath, err ? err : "?");
		sqlite3_free(err);
		host_close(h);
		return r;
	}
	/* Databases from before the network rates: the columns are added (the
	 * error when they are there already is the expected one). */
	sqlite3_exec(h->db, "ALTER TABLE stats ADD COLUMN net_rx INTEGER NOT NULL DEFAULT 0", NULL, NULL, NULL);
	sqlite3_exec(h->db, "ALTER TABLE stats ADD COLUMN net_tx INTEGER NOT NULL DEFAULT 0", NULL, NULL, NULL);
	r = host_tasks_recover(h);
	if (r < 0) {
		host_close(h);
		return r;
	}
	probe_states(h, true);
	if ((r = periodic_start(h, &h->refresher, h->refresh_ms, refresh, "state refresher")) < 0 ||
	    (r = periodic_start(h, &h->sampler, h->stats_interval_ms, host_stats_sample, "statistics thread")) < 0) {
		host_close(h);
		return r;
	}
	host_event(h, HOST_INFO, 0, NULL, "host.started", "velad %s started (home %s)", VELA_VERSION, h->home);
	*out = h;
	return 0;
}

void host_close(struct host *h)
{
	if (!h)
		return;
	if (h->db)
		host_tasks_shutdown(h);
	pthread_mutex_lock(&h->refresh_lock);
	h->stopping = true;
	if (h->refresher.running)
		pthread_cond_signal(&h->refresher.cond);
	if (h->sampler.running)
		pthread_cond_signal(&h->sampler.cond);
	pthread_mutex_unlock(&h->refresh_lock);
	periodic_join(&h->refresher);
	periodic_join(&h->sampler);
	host_stats_free(h);
	if (h->db) {
		host_event(h, HOST_INFO, 0, NULL, "host.stopped", "velad stopped; running VMs keep running");
		sqlite3_close(h->db);
	}
	while (h->oplocks) {
		struct vm_oplock *l = h->oplocks;
		h->oplocks = l->next;
		pthread_mutex_destroy(&l->lock);
		free(l);
	}
	pthread_mutex_destroy(&h->db_lock);
	pthread_mutex_destroy(&h->oplocks_lock);
	pthread_mutex_destroy(&h->refresh_lock);
	pthread_mutex_destroy(&h->event_lock);
	host_ds_state_free(h);
	pthread_mutex_destroy(&h->task_lock);
	pthread_cond_destroy(&h->task_cond);
	pthread_cond_destroy(&h->event_cond);
	free(h->home);
	free(h->vmx_binary);
	free(h);
}
