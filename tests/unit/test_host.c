/* Unit tests: src/host (inventory and events in SQLite) and src/api (body decoding, status codes). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "api.h"
#include "host.h"
#include "vmx.h"
#include "vdisk.h"

#include <unistd.h>

static char home[64];

static int setup(void **state)
{
	(void)state;
	snprintf(home, sizeof home, "/tmp/vela-host-XXXXXX");
	return mkdtemp(home) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char *cmd = xasprintf("rm -rf %s", home);
	int r = system(cmd);
	free(cmd);
	return r ? -1 : 0;
}

static char *make_vmx(const char *name)
{
	char *dir = xasprintf("%s/vms/%s", home, name);
	assert_int_equal(mkdir_p(dir, 0755), 0);
	char *path = xasprintf("%s/%s.vmx", dir, name);
	char *text = xasprintf("config.version = \"8\"\ndisplayName = \"%s\"\nmemsize = \"64\"\n", name);
	assert_int_equal(write_file_atomic(path, text, strlen(text)), 0);
	free(text);
	free(dir);
	return path;
}

static struct host *open_host(void)
{
	struct host_opts o = { .home = home };
	struct host *h = NULL;
	if (host_open(&o, &h) < 0)
		fail_msg("host_open: %s", vela_errmsg());
	return h;
}

static void inventory_persists(void **s)
{
	(void)s;
	struct host *h = open_host();
	char *a = make_vmx("alpha"), *b = make_vmx("beta");
	json_t *vm = NULL, *list = NULL;
	assert_int_equal(host_vm_register(h, "tester", a, NULL, "/prod/web", &vm), 0);
	assert_string_equal(json_string_value(json_object_get(vm, "name")), "alpha");
	assert_string_equal(json_string_value(json_object_get(vm, "state")), "off");
	int64_t ida = json_integer_value(json_object_get(vm, "id"));
	json_decref(vm);
	assert_int_equal(host_vm_register(h, "tester", b, "Beta VM", NULL, &vm), 0);
	int64_t idb = json_integer_value(json_object_get(vm, "id"));
	json_decref(vm);
	assert_int_equal(host_vm_register(h, "tester", a, NULL, NULL, &vm), -VELA_E_EXISTS);
	assert_int_equal(host_vm_register(h, "tester", a, NULL, "/a/../b", &vm), -VELA_E_BADNAME);
	assert_int_equal(host_vm_register(h, "tester", a, "", NULL, &vm), -VELA_E_BADNAME);
	assert_int_equal(host_vm_register(h, "tester", "/nonexistent.vmx", NULL, NULL, &vm), -VELA_E_NOTFOUND);
	host_close(h);

	/* Reopen: the inventory is in the database. */
	h = open_host();
	assert_int_equal(host_vm_list(h, &list), 0);
	assert_int_equal(json_array_size(list), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(list, 1), "name")), "Beta VM");
	assert_string_equal(json_string_value(json_object_get(json_array_get(list, 0), "folder")), "/prod/web");
	json_decref(list);
	assert_int_equal(host_vm_power(h, "tester", ida, "stop", "hard", NULL, &vm), -VELA_E_BADSTATE);
	assert_int_equal(host_vm_power(h, "tester", ida, "explode", NULL, NULL, &vm), -VELA_E_INVAL);
	assert_int_equal(host_vm_power(h, "tester", 9999, "start", NULL, NULL, &vm), -VELA_E_NOTFOUND);
	assert_int_equal(host_vm_unregister(h, "tester", idb), 0);
	assert_int_equal(host_vm_get(h, idb, &vm), -VELA_E_NOTFOUND);
	assert_int_equal(host_vm_get(h, ida, &vm), 0);
	json_decref(vm);

	/* Events: per VM, by severity, after an id, newest `limit` oldest first. */
	json_t *ev = NULL;
	struct host_event_query q = { .vm_id = idb };
	assert_int_equal(host_event_list(h, &q, NULL, &ev), 0);
	assert_int_equal(json_array_size(ev), 2);   /* registered, unregistered */
	assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 1), "type")), "vm.unregistered");
	assert_string_equal(json_string_value(json_object_get(json_array_get(ev, 1), "user")), "tester");
	json_decref(ev);
	q = (struct host_event_query){ .severity = "warning" };
	assert_int_equal(host_event_list(h, &q, NULL, &ev), 0);
	assert_int_equal(json_array_size(ev), 1);   /* the refused stop */
	json_decref(ev);
	q = (struct host_event_query){ .limit = 2 };
	assert_int_equal(host_event_list(h, &q, NULL, &ev), 0);
	assert_int_equal(json_array_size(ev), 2);
	int64_t last = json_integer_value(json_object_get(json_array_get(ev, 1), "id"));
	assert_true(json_integer_value(json_object_get(json_array_get(ev, 0), "id")) < last);
	json_decref(ev);
	q = (struct host_event_query){ .after_id = last };
	assert_int_equal(host_event_list(h, &q, NULL, &ev), 0);
	assert_int_equal(json_array_size(ev), 0);
	json_decref(ev);
	q = (struct host_event_query){ .severity = "loud" };
	assert_int_equal(host_event_list(h, &q, NULL, &ev), -VELA_E_INVAL);
	q = (struct host_event_query){ .limit = 10001 };
	assert_int_equal(host_event_list(h, &q, NULL, &ev), -VELA_E_RANGE);
	host_close(h);
	free(a);
	free(b);
}

/* The text list is JSON whatever the names hold, and filters like the access rules. */
static void list_text_is_json(void **s)
{
	(void)s;
	struct host *h = open_host();
	char *v = make_vmx("textlist");
	json_t *vm = NULL;
	assert_int_equal(host_vm_register(h, "tester", v, "we\"ird\\name \xc3\xa9", "/odd", &vm), 0);
	int64_t id = json_integer_value(json_object_get(vm, "id"));
	json_decref(vm);
	struct strbuf sb = { 0 };
	assert_int_equal(host_vm_list_text(h, NULL, &sb), 0);
	json_error_t err;
	json_t *doc = json_loads(sb.data, 0, &err);
	if (!doc)
		fail_msg("not JSON: %s in %s", err.text, sb.data);
	json_t *vms = json_object_get(doc, "vms");
	json_t *last = json_array_get(vms, json_array_size(vms) - 1);
	assert_string_equal(json_string_value(json_object_get(last, "name")), "we\"ird\\name \xc3\xa9");
	assert_string_equal(json_string_value(json_object_get(last, "role")), "admin");
	json_decref(doc);
	strbuf_free(&sb);

	/* Filtered: a principal with a grant on this VM only sees just it. */
	json_t *g = NULL;
	char scope[32];
	snprintf(scope, sizeof scope, "vm:%lld", (long long)id);
	assert_int_equal(host_grant(h, "tester", "user:lister", scope, "operator", &g), 0);
	json_decref(g);
	struct host_principal p = { .user = "lister" };
	struct host_access *acc = NULL;
	assert_int_equal(host_access_load(h, &p, &acc), 0);
	assert_int_equal(host_vm_list_text(h, acc, &sb), 0);
	doc = json_loads(sb.data, 0, &err);
	assert_non_null(doc);
	vms = json_object_get(doc, "vms");
	assert_int_equal(json_array_size(vms), 1);
	assert_string_equal(json_string_value(json_object_get(json_array_get(vms, 0), "role")), "operator");
	json_decref(doc);
	strbuf_free(&sb);
	host_access_free(acc);
	host_close(h);
	free(v);
}

static void create_vm_or_nothing(void **s)
{
	(void)s;
	struct host *h = open_host();
	json_t *vm = NULL;
	json_t *disks = json_pack("[{s:s}, {s:s, s:s}]", "size", "8m", "size", "4m", "type", "vhd-dynamic");
	struct host_vm_spec sp = { .name = "made", .memsize_mb = 64, .vcpus = 1, .disks = disks };
	assert_int_equal(host_vm_create(h, "tester", &sp, NULL, &vm), 0);
	char *vmx = xasprintf("%s/datastores/local/made/made.vmx", home);
	assert_string_equal(json_string_value(json_object_get(vm, "config")), vmx);
	json_decref(vm);
	struct vmx_file *f = NULL;
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_string_equal(vmx_get(f, "scsi0:1.fileName"), "made_1.vhd");
	vmx_file_free(f);
	free(vmx);
	json_decref(disks);

	/* The third disk is bad: the two made before it and the folder go. */
	disks = json_pack("[{s:s}, {s:s}, {s:s}]", "size", "8m", "size", "8m", "size", "huge");
	sp = (struct host_vm_spec){ .name = "undone", .memsize_mb = 64, .vcpus = 1, .disks = disks };
	assert_int_equal(host_vm_create(h, "tester", &sp, NULL, &vm), -VELA_E_INVAL);
	char *dir = xasprintf("%s/datastores/local/undone", home);
	struct stat st;
	assert_int_equal(stat(dir, &st), -1);
	free(dir);
	json_decref(disks);
	sp = (struct host_vm_spec){ .name = "a/b", .memsize_mb = 64, .vcpus = 1 };
	assert_int_equal(host_vm_create(h, "tester", &sp, NULL, &vm), -VELA_E_BADNAME);
	sp = (struct host_vm_spec){ .name = "made", .memsize_mb = 64, .vcpus = 1 };
	assert_int_equal(host_vm_create(h, "tester", &sp, NULL, &vm), -VELA_E_EXISTS);
	host_close(h);
}

static void datastore_paths(void **s)
{
	(void)s;
	struct host *h = open_host();
	char *p = NULL;
	static const char *const good[] = { "", "iso", "iso/x.iso", "a b/c-d_e.vmdk", "..x", "x.." };
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		if (host_ds_path(h, "local", good[i], &p) < 0)
			fail_msg("refused %s: %s", good[i], vela_errmsg());
		assert_non_null(strstr(p, "/datastores/local"));
		free(p);
	}
	static const char *const bad[] = { "..", "../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "a/",
					   "a\001b", "a\nb" };
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++)
		if (host_ds_path(h, "local", bad[i], &p) != -VELA_E_BADNAME)
			fail_msg("accepted %s", bad[i]);
	assert_int_equal(host_ds_path(h, "../local", "x", &p), -VELA_E_BADNAME);
	assert_int_equal(host_ds_path(h, ".local", "x", &p), -VELA_E_BADNAME);
	assert_int_equal(host_ds_path(h, "nope", "x", &p), -VELA_E_NOTFOUND);
	/* A link that leads out of the datastore. */
	char *link = xasprintf("%s/datastores/local/out", home);
	assert_int_equal(symlink("/etc", link), 0);
	assert_int_equal(host_ds_path(h, "local", "out/passwd", &p), -VELA_E_PERM);
	assert_int_equal(host_ds_path(h, "local", "out/new/file", &p), -VELA_E_PERM);
	unlink(link);
	free(link);
	host_close(h);
}

static int slow_task(struct host *h, struct host_task *t, void *arg, json_t **result)
{
	(void)h;
	int *steps = arg;
	for (int i = 0; i < 200; i++) {
		host_task_progress(t, (unsigned)i / 2);
		if (host_task_cancelled(t))
			return vela_error(VELA_E_CANCELED, "stopped at step %d", i);
		usleep(10 * 1000);
		(*steps)++;
	}
	*result = json_pack("{s:i}", "steps", *steps);
	return 0;
}

static void tasks_progress_cancel_recover(void **s)
{
	(void)s;
	struct host *h = open_host();
	struct host_task *t = NULL;
	json_t *got = NULL, *list = NULL;
	/* Driven from outside: progress is live, the end is recorded. */
	assert_int_equal(host_task_begin(h, "ann", 0, "datastore.upload", "[local] x.iso", true, &t), 0);
	int64_t up = host_task_id(t);
	host_task_progress(t, 40);
	assert_int_equal(host_task_get(h, up, &got), 0);
	assert_string_equal(json_string_value(json_object_get(got, "state")), "running");
	assert_int_equal(json_integer_value(json_object_get(got, "progress")), 40);
	json_decref(got);
	host_task_end(h, t, 0, json_pack("{s:i}", "size", 7));
	assert_int_equal(host_task_get(h, up, &got), 0);
	assert_string_equal(json_string_value(json_object_get(got, "state")), "success");
	assert_int_equal(json_integer_value(json_object_get(json_object_get(got, "result"), "size")), 7);
	json_decref(got);
	assert_int_equal(host_task_cancel(h, "ann", up), -VELA_E_BADSTATE);

	/* Run in a thread, cancelled midway: it ends cancelled. */
	int steps = 0;
	assert_int_equal(host_task_begin(h, "bob", 0, "test.slow", "", true, &t), 0);
	int64_t slow = host_task_id(t);
	assert_int_equal(host_task_spawn(h, t, slow_task, &steps, NULL), 0);
	usleep(100 * 1000);
	assert_int_equal(host_task_cancel(h, "bob", slow), 0);
	assert_int_equal(host_task_wait(h, slow, 10000, &got), 0);
	assert_string_equal(json_string_value(json_object_get(got, "state")), "cancelled");
	assert_string_equal(json_string_value(json_object_get(json_object_get(got, "error"), "name")), "VELA_E_CANCELED");
	assert_true(steps > 0 && steps < 200);
	json_decref(got);

	/* Not cancelable; and cut off by a stop of velad. */
	assert_int_equal(host_task_begin(h, "cy", 0, "vm.delete", "", false, &t), 0);
	int64_t cut = host_task_id(t);
	assert_int_equal(host_task_cancel(h, "cy", cut), -VELA_E_NOTSUP);
	struct host_task_query q = { .state = "running" };
	assert_int_equal(host_task_list(h, &q, NULL, NULL, &list), 0);
	assert_int_equal(json_array_size(list), 1);
	json_decref(list);
	host_task_end(h, t, 0, NULL);   /* (a real stop would leave it running in the database) */
	host_close(h);
	h = open_host();
	assert_int_equal(host_task_get(h, cut, &got), 0);
	assert_string_equal(json_string_value(json_object_get(got, "state")), "success");
	json_decref(got);
	q = (struct host_task_query){ .vm = 0 };
	assert_int_equal(host_task_list(h, &q, NULL, NULL, &list), 0);
	assert_true(json_array_size(list) >= 3);   /* autostart's own, too */
	json_decref(list);
	host_close(h);
}

static void reconfigure_and_delete(void **s)
{
	(void)s;
	struct host *h = open_host();
	json_t *vm = NULL, *out = NULL;
	json_t *disks = json_pack("[{s:s}]", "size", "8m");
	struct host_vm_spec sp = { .name = "edit", .memsize_mb = 64, .vcpus = 1, .disks = disks };
	assert_int_equal(host_vm_create(h, "tester", &sp, NULL, &vm), 0);
	json_decref(disks);
	int64_t id = json_integer_value(json_object_get(vm, "id"));
	char *vmx = xstrdup(json_string_value(json_object_get(vm, "config")));
	json_decref(vm);
	json_t *ch = json_pack("{s:i, s:i, s:s, s:s, s:s}", "memsize", 256, "vcpus", 2, "annotation", "web tier", "name",
			       "edited", "folder", "/prod");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), 0);
	json_decref(ch);
	assert_string_equal(json_string_value(json_object_get(out, "name")), "edited");
	assert_string_equal(json_string_value(json_object_get(out, "folder")), "/prod");
	json_t *set = json_object_get(out, "settings");
	assert_int_equal(json_integer_value(json_object_get(set, "memsize")), 256);
	assert_int_equal(json_integer_value(json_object_get(set, "vcpus")), 2);
	json_decref(out);
	struct vmx_file *f = NULL;
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_string_equal(vmx_get(f, "memsize"), "256");
	assert_string_equal(vmx_get(f, "numvcpus"), "2");
	assert_string_equal(vmx_get(f, "displayName"), "edited");
	vmx_file_free(f);
	/* Bad changes change nothing. */
	ch = json_pack("{s:i, s:i}", "vcpus", 4, "memsize", 1);
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), -VELA_E_RANGE);
	json_decref(ch);
	ch = json_pack("{s:i, s:b}", "vcpus", 4, "colour", 1);
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), -VELA_E_INVAL);
	json_decref(ch);
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_string_equal(vmx_get(f, "numvcpus"), "2");
	vmx_file_free(f);

	/* Hardware: a disk on a free unit, a second NIC, a disk mode, boot order. */
	ch = json_pack("{s:[{s:s, s:s}], s:[{s:s}], s:{s:s}, s:s}", "add_disks", "size", "4m", "bus", "virtio", "add_nics",
		       "connection", "hostonly", "disk_modes", "scsi0:0", "independent-persistent", "boot_order", "cdrom,disk");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), 0);
	json_decref(ch);
	json_decref(out);
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_string_equal(vmx_get(f, "virtio0:0.fileName"), "edit_1.vmdk");
	assert_string_equal(vmx_get(f, "ethernet0.connectionType"), "hostonly");   /* the first free slot */
	assert_string_equal(vmx_get(f, "scsi0:0.mode"), "independent-persistent");
	assert_string_equal(vmx_get(f, "boot.order"), "cdrom,disk");
	vmx_file_free(f);
	char *added = xasprintf("%s/datastores/local/edit/edit_1.vmdk", home);
	struct stat st;
	assert_int_equal(stat(added, &st), 0);
	/* Removing a device takes all its keys; an unknown one changes nothing,
	 * and a disk made by a refused change goes again. */
	ch = json_pack("{s:[s]}", "remove_devices", "ethernet0");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), 0);
	json_decref(ch);
	json_decref(out);
	ch = json_pack("{s:[{s:s}], s:[s]}", "add_disks", "size", "4m", "remove_devices", "scsi9:9");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), -VELA_E_NOTFOUND);
	json_decref(ch);
	ch = json_pack("{s:[{s:s}, {s:s}]}", "add_disks", "size", "4m", "size", "lots");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), -VELA_E_INVAL);
	json_decref(ch);
	char *second = xasprintf("%s/datastores/local/edit/edit_2.vmdk", home);
	assert_int_equal(stat(second, &st), -1);
	free(second);
	ch = json_pack("{s:s}", "boot_order", "floppy,nowhere");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), -VELA_E_CONFIG);
	json_decref(ch);
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_null(vmx_get(f, "ethernet0.present"));
	assert_string_equal(vmx_get(f, "boot.order"), "cdrom,disk");
	vmx_file_free(f);
	free(added);

	/* Serial ports: a file and a client pipe on free slots, listed in the
	 * settings; paths and host devices are refused and change nothing. */
	ch = json_pack("{s:[{s:s, s:s}, {s:s, s:s, s:s}]}", "add_serials", "type", "file", "file", "com1.log", "type",
		       "pipe", "file", "com2.sock", "endpoint", "client");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), 0);
	json_decref(ch);
	json_t *ser = json_object_get(json_object_get(out, "settings"), "serials");
	assert_int_equal(json_array_size(ser), 2);
	assert_string_equal(json_string_value(json_object_get(json_array_get(ser, 1), "endpoint")), "client");
	json_decref(out);
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_string_equal(vmx_get(f, "serial0.fileType"), "file");
	assert_string_equal(vmx_get(f, "serial0.fileName"), "com1.log");
	assert_string_equal(vmx_get(f, "serial1.fileType"), "pipe");
	assert_string_equal(vmx_get(f, "serial1.pipe.endPoint"), "client");
	vmx_file_free(f);
	static const char *const bad_serials[] = {
		"{\"add_serials\": [{\"type\": \"file\", \"file\": \"/etc/shadow\"}]}",
		"{\"add_serials\": [{\"type\": \"file\", \"file\": \"..\"}]}",
		"{\"add_serials\": [{\"type\": \"device\", \"file\": \"/dev/ttyS0\"}]}",
		"{\"add_serials\": [{\"type\": \"file\"}]}",
		"{\"add_serials\": [{\"type\": \"console\", \"endpoint\": \"client\"}]}",
		"{\"add_serials\": [{\"type\": \"console\"}, {\"type\": \"console\"}, {\"type\": \"console\"}]}",
	};
	for (size_t i = 0; i < sizeof bad_serials / sizeof *bad_serials; i++) {
		ch = json_loads(bad_serials[i], 0, NULL);
		assert_non_null(ch);
		assert_true(host_vm_reconfigure(h, "tester", id, ch, &out) < 0);
		json_decref(ch);
	}
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_null(vmx_get(f, "serial2.present"));   /* not even the first two consoles of the last */
	vmx_file_free(f);
	ch = json_pack("{s:[s]}", "remove_devices", "serial1");
	assert_int_equal(host_vm_reconfigure(h, "tester", id, ch, &out), 0);
	json_decref(ch);
	json_decref(out);
	assert_int_equal(vmx_file_load(vmx, &f), 0);
	assert_null(vmx_get(f, "serial1.fileType"));
	vmx_file_free(f);

	/* A disk outside the folder is kept; the folder goes. */
	char *outside = xasprintf("%s/shared.vmdk", home);
	struct vdisk_create_opts dco = { .type = VDISK_TYPE_VMDK_MONOLITHIC_SPARSE, .size = 1 << 20 };
	assert_int_equal(vdisk_create(outside, &dco), 0);
	const char *k[] = { "scsi0:1.present", "scsi0:1.fileName" }, *v[] = { "TRUE", outside };
	assert_int_equal(vmx_file_edit(vmx, k, v, 2), 0);
	assert_int_equal(host_vm_delete(h, "tester", id, true, NULL, &out), 0);
	assert_int_equal(json_array_size(json_object_get(out, "kept")), 1);
	assert_true(json_array_size(json_object_get(out, "removed")) >= 2);
	assert_true(json_is_true(json_object_get(out, "folder_removed")));
	json_decref(out);
	assert_int_equal(stat(vmx, &st), -1);
	assert_int_equal(stat(outside, &st), 0);
	assert_int_equal(host_vm_get(h, id, &out), -VELA_E_NOTFOUND);
	free(outside);
	free(vmx);
	host_close(h);
}

static void datastores_add_remove(void **s)
{
	(void)s;
	struct host *h = open_host();
	json_t *out = NULL;
	char *dir = xasprintf("%s/elsewhere", home);
	assert_int_equal(mkdir(dir, 0755), 0);
	assert_int_equal(host_datastore_add(h, "tester", "nfs1", dir, &out), 0);
	assert_true(json_is_true(json_object_get(out, "linked")));
	json_decref(out);
	char *p = NULL;
	assert_int_equal(host_ds_path(h, "nfs1", "x.iso", &p), 0);
	assert_non_null(strstr(p, "/elsewhere/x.iso"));
	free(p);
	assert_int_equal(host_datastore_add(h, "tester", "nfs1", dir, &out), -VELA_E_EXISTS);
	assert_int_equal(host_datastore_add(h, "tester", "again", dir, &out), -VELA_E_EXISTS);   /* same folder */
	assert_int_equal(host_datastore_add(h, "tester", "nope", "/no/such/dir", &out), -VELA_E_NOTFOUND);
	assert_int_equal(host_datastore_add(h, "tester", "../x", dir, &out), -VELA_E_BADNAME);
	assert_int_equal(host_datastore_add(h, "tester", "rel", "relative/path", &out), -VELA_E_INVAL);
	/* In use by a registered VM: kept. */
	json_t *vm = NULL;
	struct host_vm_spec sp = { .name = "onnfs", .datastore = "nfs1", .memsize_mb = 64, .vcpus = 1 };
	assert_int_equal(host_vm_create(h, "tester", &sp, NULL, &vm), 0);
	int64_t id = json_integer_value(json_object_get(vm, "id"));
	json_decref(vm);
	assert_int_equal(host_datastore_remove(h, "tester", "nfs1"), -VELA_E_BUSY);
	assert_int_equal(host_vm_unregister(h, "tester", id), 0);
	assert_int_equal(host_datastore_remove(h, "tester", "nfs1"), 0);
	assert_int_equal(host_datastore_remove(h, "tester", "nfs1"), -VELA_E_NOTFOUND);
	assert_int_equal(host_datastore_remove(h, "tester", "local"), -VELA_E_BADSTATE);
	struct stat st;
	char *kept = xasprintf("%s/onnfs/onnfs.vmx", dir);
	assert_int_equal(stat(kept, &st), 0);   /* files stay */
	free(kept);
	free(dir);
	host_close(h);
}

static void stats_ring(void **s)
{
	(void)s;
	/* Samples every 50 ms, kept 300 ms: after a second, only the newest. */
	struct host_opts o = { .home = home, .stats_interval_ms = 50, .stats_keep_ms = 300 };
	struct host *h = NULL;
	assert_int_equal(host_open(&o, &h), 0);
	usleep(1000 * 1000);
	json_t *st = NULL;
	assert_int_equal(host_stats(h, 0, 0, &st), 0);
	json_t *samples = json_object_get(st, "samples");
	size_t n = json_array_size(samples);
	assert_true(n >= 2 && n <= 8);
	int64_t first = json_integer_value(json_object_get(json_array_get(samples, 0), "time"));
	assert_true(time_real_ms() - first < 300 + 150);
	json_t *last = json_array_get(samples, n - 1);
	assert_true(json_integer_value(json_object_get(last, "mem_total")) > json_integer_value(json_object_get(last, "mem")));
	assert_true(json_number_value(json_object_get(last, "cpu")) >= 0);
	assert_int_equal(json_integer_value(json_object_get(st, "interval_ms")), 50);
	json_decref(st);
	/* A VM that never ran has none. */
	assert_int_equal(host_stats(h, 42, 0, &st), 0);
	assert_int_equal(json_array_size(json_object_get(st, "samples")), 0);
	json_decref(st);
	host_close(h);
}

static void body_decoding(void **s)
{
	(void)s;
	struct api_field f[] = { { .name = "op", .type = 's' }, { .name = "n", .type = 'i', .optional = true },
				 { .name = "force", .type = 'b', .optional = true } };
	json_t *doc = NULL;
	const char ok[] = "{\"op\": \"stop\", \"n\": 3, \"force\": true}";
	assert_int_equal(api_decode_body(ok, strlen(ok), f, 3, &doc), 0);
	assert_string_equal(f[0].s, "stop");
	assert_int_equal(f[1].i, 3);
	assert_true(f[2].b);
	json_decref(doc);
	static const char *const bad[] = {
		"", "{", "[]", "\"op\"", "{\"n\": 1}", "{\"op\": 1}", "{\"op\": \"x\", \"n\": \"1\"}",
		"{\"op\": \"x\", \"other\": 1}", "{\"op\": \"x\", \"op\": \"y\"}", "{\"op\": \"a\\u0000b\"}",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		struct api_field g[3];
		memcpy(g, f, sizeof g);
		for (size_t k = 0; k < 3; k++)
			g[k].present = false;
		doc = NULL;
		if (api_decode_body(bad[i], strlen(bad[i]), g, 3, &doc) != -VELA_E_INVAL)
			fail_msg("accepted %s", bad[i]);
		assert_null(doc);
	}
}

static void http_status_of_errors(void **s)
{
	(void)s;
	assert_int_equal(api_http_status(-VELA_E_INVAL), 400);
	assert_int_equal(api_http_status(-VELA_E_SYNTAX), 400);
	assert_int_equal(api_http_status(-VELA_E_NOTFOUND), 404);
	assert_int_equal(api_http_status(-VELA_E_BADSTATE), 409);
	assert_int_equal(api_http_status(-VELA_E_PERM), 403);
	assert_int_equal(api_http_status(-VELA_E_SESSION), 401);
	assert_int_equal(api_http_status(-VELA_E_TOOBIG), 413);
	assert_int_equal(api_http_status(-VELA_E_INTERNAL), 500);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(inventory_persists),
		cmocka_unit_test(list_text_is_json),
		cmocka_unit_test(create_vm_or_nothing),
		cmocka_unit_test(datastore_paths),
		cmocka_unit_test(tasks_progress_cancel_recover),
		cmocka_unit_test(reconfigure_and_delete),
		cmocka_unit_test(datastores_add_remove),
		cmocka_unit_test(stats_ring),
		cmocka_unit_test(body_decoding),
		cmocka_unit_test(http_status_of_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
