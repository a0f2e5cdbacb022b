/* Unit tests: src/vmx (parser, round trip, model validation, identity). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "vmx.h"

static char tmpdir[64];

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/vela-vmx-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	char *d = xasprintf("%s/disk.img", tmpdir);
	int fd = open(d, O_CREAT | O_WRONLY, 0644);
	close(fd);
	free(d);
	d = xasprintf("%s/disk2.img", tmpdir);
	fd = open(d, O_CREAT | O_WRONLY, 0644);
	close(fd);
	free(d);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char *cmd = xasprintf("rm -rf %s", tmpdir);
	int r = system(cmd);
	free(cmd);
	return r == 0 ? 0 : -1;
}

/* A hand-written file in the classic style: #! line, mixed-case keys,
 * unquoted values, comments, blank lines, an unknown key, CRLF on one line. */
static const char classic[] =
	"#!/usr/bin/vmware\n"
	".encoding = \"UTF-8\"\n"
	"config.version = \"8\"\n"
	"virtualHW.version = 4\n"
	"\n"
	"# the guest\n"
	"displayName = \"Web server\"\n"
	"guestOS = \"otherlinux\"\n"
	"memSize = 512\r\n"
	"NumVCPUs = \"2\"\n"
	"SCSI0.present = \"true\"\n"
	"scsi0.virtualDev = \"lsilogic\"\n"
	"scsi0:0.present = \"TRUE\"\n"
	"scsi0:0.fileName = \"disk.img\"\n"
	"scsi0:0.mode = \"independent-persistent\"\n"
	"ide1:0.present = \"TRUE\"\n"
	"ide1:0.deviceType = \"cdrom-image\"\n"
	"ide1:0.fileName = \"\"\n"
	"Ethernet0.present = \"TRUE\"\n"
	"ethernet0.virtualDev = \"e1000\"\n"
	"ethernet0.connectionType = \"bridged\"\n"
	"serial0.present = \"TRUE\"\n"
	"serial0.fileType = \"pipe\"\n"
	"serial0.fileName = \"/tmp/com1\"\n"
	"serial0.pipe.endPoint = \"client\"\n"
	"annotation = \"line one|0Aline two with a |22quote|22\"\n"
	"someVendor.unknownKey = \"kept as is\"\n"
	"tools.syncTime = \"FALSE\"";     /* no final newline */

static struct vmx_file *parse(const char *text)
{
	struct vmx_file *f = NULL;
	int r = vmx_file_parse("test.vmx", text, strlen(text), &f);
	if (r < 0)
		fail_msg("parse failed: %s", vela_errmsg());
	return f;
}

static int build(struct vmx_file *f, struct vmx_model **m, struct strbuf *diag)
{
	char *path = xasprintf("%s/test.vmx", tmpdir);
	int r = vmx_model_build(f, path, NULL, diag, m);
	free(path);
	return r;
}

static void classic_file_parses(void **state)
{
	(void)state;
	struct vmx_file *f = parse(classic);
	assert_string_equal(vmx_get(f, "memsize"), "512");          /* case-insensitive, unquoted */
	assert_string_equal(vmx_get(f, "MEMSIZE"), "512");
	assert_string_equal(vmx_get(f, "virtualhw.version"), "4");
	assert_int_equal(vmx_get_line(f, "numvcpus"), 10);
	assert_string_equal(vmx_get(f, "annotation"), "line one\nline two with a \"quote\"");
	assert_string_equal(vmx_get(f, "someVendor.unknownKey"), "kept as is");
	assert_null(vmx_get(f, "nosuch"));

	struct vmx_model *m = NULL;
	struct strbuf diag = { 0 };
	int r = build(f, &m, &diag);
	if (r < 0)
		fail_msg("%s", diag.data);
	assert_string_equal(m->display_name, "Web server");
	assert_int_equal(m->memsize_mb, 512);
	assert_int_equal(m->vcpus, 2);
	assert_int_equal(m->n_disks, 2);
	assert_string_equal(m->disks[0].addr, "scsi0:0");
	assert_int_equal(m->disks[0].mode, VMX_MODE_INDEPENDENT_PERSISTENT);
	assert_int_equal(m->scsi[0].dev, VMX_SCSI_LSILOGIC);
	assert_int_equal(m->disks[1].type, VMX_DEV_CDROM_IMAGE);
	assert_null(m->disks[1].path);                              /* empty drive */
	assert_true(m->nics[0].present);
	assert_int_equal(m->nics[0].dev, VMX_NIC_E1000);
	assert_int_equal(m->serials[0].type, VMX_SERIAL_PIPE);
	assert_false(m->serials[0].pipe_server);
	assert_int_equal(m->chipset, VMX_CHIPSET_Q35);
	assert_int_equal(m->accel, VMX_ACCEL_AUTO);
	vmx_model_free(m);
	strbuf_free(&diag);
	vmx_file_free(f);
}

static void round_trip_is_byte_identical(void **state)
{
	(void)state;
	struct vmx_file *f = parse(classic);
	size_t len;
	char *out = vmx_file_serialize(f, &len);
	assert_int_equal(len, strlen(classic));
	assert_memory_equal(out, classic, len);
	free(out);
	vmx_file_free(f);
}

static void set_changes_only_that_line(void **state)
{
	(void)state;
	struct vmx_file *f = parse(classic);
	assert_int_equal(vmx_set(f, "MEMSIZE", "1024"), 0);   /* existing key, other spelling */
	assert_int_equal(vmx_set(f, "uuid.bios", "56 4d 00 00 00 00 00 00-00 00 00 00 00 00 00 01"), 0);
	assert_int_equal(vmx_set(f, "annotation", "a|b\"c"), 0);
	assert_true(vmx_file_dirty(f));
	char *out = vmx_file_serialize(f, NULL);

	/* Expected: memSize line rewritten keeping its spelling and CRLF, the
	 * annotation escaped, the last line gains its newline, one line appended. */
	struct strbuf want = { 0 };
	const char *p = classic;
	const char *mem = strstr(p, "memSize = 512\r\n");
	const char *ann = strstr(p, "annotation = ");
	const char *ann_end = strchr(ann, '\n') + 1;
	strbuf_append(&want, p, (size_t)(mem - p));
	strbuf_puts(&want, "memSize = \"1024\"\r\n");
	const char *after_mem = mem + strlen("memSize = 512\r\n");
	strbuf_append(&want, after_mem, (size_t)(ann - after_mem));
	strbuf_puts(&want, "annotation = \"a|7Cb|22c\"\n");
	strbuf_puts(&want, ann_end);
	strbuf_puts(&want, "\nuuid.bios = \"56 4d 00 00 00 00 00 00-00 00 00 00 00 00 00 01\"\n");
	assert_string_equal(out, want.data);

	/* And it parses back to the same values. */
	struct vmx_file *g = parse(out);
	assert_string_equal(vmx_get(g, "annotation"), "a|b\"c");
	assert_string_equal(vmx_get(g, "memsize"), "1024");
	vmx_file_free(g);
	strbuf_free(&want);
	free(out);

	/* Found by the fuzzer: a CRLF file whose last line ends in a lone CR. */
	const char *cr = "a = \"1\"\r\nb = \"2\"\r";
	struct vmx_file *c = parse(cr);
	assert_int_equal(vmx_set(c, "c", "3"), 0);
	char *cr_out = vmx_file_serialize(c, NULL);
	assert_string_equal(cr_out, "a = \"1\"\r\nb = \"2\"\r\nc = \"3\"\r\n");
	struct vmx_file *c2 = parse(cr_out);
	assert_string_equal(vmx_get(c2, "b"), "2");
	vmx_file_free(c2);
	vmx_file_free(c);
	free(cr_out);

	/* Setting a value to what it already is changes nothing. */
	struct vmx_file *h = parse(classic);
	assert_int_equal(vmx_set(h, "numvcpus", "2"), 0);
	assert_false(vmx_file_dirty(h));
	assert_int_equal(vmx_set(h, "bad key", "x"), -VELA_E_INVAL);
	vmx_unset(h, "tools.syncTime");
	assert_null(vmx_get(h, "tools.synctime"));
	vmx_file_free(h);
	vmx_file_free(f);
}

struct bad_case {
	const char *text;
	int code;
	const char *needle;     /* must appear in the message */
};

static void malformed_files_are_refused(void **state)
{
	(void)state;
	static const struct bad_case syntax[] = {
		{ "memsize = \"256\n", -VELA_E_SYNTAX, "test.vmx:1: key \"memsize\": missing closing '\"'" },
		{ "a = \"1\"\nA = \"2\"\n", -VELA_E_SYNTAX, "test.vmx:2: key \"A\" is set twice (first at line 1)" },
		{ "memsize \"256\"\n", -VELA_E_SYNTAX, "expected '=' after the key" },
		{ "= \"256\"\n", -VELA_E_SYNTAX, "expected a key" },
		{ "memsize = \"256\" junk\n", -VELA_E_SYNTAX, "unexpected text after the closing" },
		{ "memsize = 25\"6\n", -VELA_E_SYNTAX, "stray '\"'" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(syntax); i++) {
		struct vmx_file *f = NULL;
		int r = vmx_file_parse("test.vmx", syntax[i].text, strlen(syntax[i].text), &f);
		assert_int_equal(r, syntax[i].code);
		if (!strstr(vela_errmsg(), syntax[i].needle))
			fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, vela_errmsg(), syntax[i].needle);
		assert_null(f);
	}
	struct vmx_file *f = NULL;
	assert_int_equal(vmx_file_parse("x.vmx", "a = \"1\"\0b", 9, &f), -VELA_E_SYNTAX);

	static const struct bad_case model[] = {
		{ "memsize = \"256\"\ntools.syncTime = \"maybe\"\n", -VELA_E_CONFIG,
		  "test.vmx:2: tools.syncTime: expected a boolean (TRUE or FALSE), got \"maybe\"" },
		{ "memsize = \"256\"\nscsi4.present = \"TRUE\"\n", -VELA_E_CONFIG,
		  "scsi4.present: device index out of range: scsi0..scsi3" },
		{ "memsize = \"256\"\nethernet10.present = \"TRUE\"\n", -VELA_E_CONFIG,
		  "ethernet10.present: device index out of range: ethernet0..ethernet9" },
		{ "memsize = \"256\"\nide0:2.present = \"TRUE\"\n", -VELA_E_CONFIG, "unit out of range" },
		{ "memsize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0:7.present = \"TRUE\"\n", -VELA_E_CONFIG,
		  "SCSI unit 7 is the controller's own address" },
		{ "memsize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"missing.vmdk\"\n",
		  -VELA_E_CONFIG, "test.vmx:4: scsi0:0.fileName: disk \"missing.vmdk\" does not exist" },
		{ "memsize = \"256\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"disk.img\"\n", -VELA_E_CONFIG,
		  "its controller scsi0 is not" },
		{ "memsize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"floppyscsi\"\n", -VELA_E_CONFIG,
		  "scsi0.virtualDev: expected lsilogic, lsisas1068, buslogic, pvscsi or virtio, got \"floppyscsi\"" },
		{ "memsize = \"2\"\n", -VELA_E_CONFIG, "memsize: expected a whole number from 4 to 1048576" },
		{ "memsize = \"4194304\"\n", -VELA_E_CONFIG, "memsize: expected a whole number from 4 to 1048576" },
		{ "memsize = \"258\"\n", -VELA_E_CONFIG, "multiple of 4 MB" },
		{ "displayName = \"x\"\n", -VELA_E_CONFIG, "memory size is required" },
		{ "memsize = \"256\"\nnumvcpus = \"0\"\n", -VELA_E_CONFIG, "numvcpus: expected a whole number from 1 to 255" },
		{ "memsize = \"256\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"disk.img\"\n"
		  "scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"disk.img\"\n", -VELA_E_CONFIG,
		  "already attached as scsi0:0" },
		{ "memsize = \"256\"\nethernet0.present = \"TRUE\"\nethernet0.addressType = \"static\"\n"
		  "ethernet0.address = \"00:11:22:33:44:55\"\n", -VELA_E_CONFIG, "outside the allowed ranges" },
		{ "memsize = \"256\"\nethernet0.present = \"TRUE\"\nethernet0.addressType = \"static\"\nethernet0.address = \"02:56:4c:80:00:01\"\n"
		  "ethernet1.present = \"TRUE\"\nethernet1.addressType = \"static\"\nethernet1.address = \"02:56:4c:80:00:01\"\n",
		  -VELA_E_CONFIG, "already used by ethernet0" },
		{ "memsize = \"256\"\nserial0.present = \"TRUE\"\nserial0.fileType = \"console\"\n"
		  "serial1.present = \"TRUE\"\nserial1.fileType = \"console\"\n", -VELA_E_CONFIG, "serial0 is already the console" },
		{ "memsize = \"256\"\nserial0.present = \"TRUE\"\nserial0.fileType = \"file\"\n", -VELA_E_CONFIG,
		  "needs a file name" },
		{ "memsize = \"256\"\nengine.accel = \"hvf\"\n", -VELA_E_CONFIG, "engine.accel: expected auto, kvm or tcg" },
		{ "memsize = \"256\"\nuuid.bios = \"12 34\"\n", -VELA_E_CONFIG, "uuid.bios: expected a UUID" },
		{ "memsize = \"256\"\nvirtio0:0.present = \"TRUE\"\nvirtio0:0.deviceType = \"cdrom-image\"\n", -VELA_E_CONFIG,
		  "virtio-blk devices can only be disks" },
		{ "memsize = \"256\"\nsched.mem.minsize = \"512\"\n", -VELA_E_CONFIG, "larger than memsize" },
		{ "memsize = \"256\"\nsched.cpu.shares = \"lots\"\n", -VELA_E_CONFIG, "expected low, normal, high or a number" },
		{ "memsize = \"256\"\nboot.order = \"disk,tape\"\n", -VELA_E_CONFIG, "boot.order" },
		{ "memsize = \"256\"\nboot.kernel = \"no-such-kernel\"\n", -VELA_E_CONFIG, "kernel \"no-such-kernel\" does not exist" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(model); i++) {
		struct vmx_file *g = parse(model[i].text);
		struct vmx_model *m = NULL;
		struct strbuf diag = { 0 };
		int r = build(g, &m, &diag);
		if (r != model[i].code)
			fail_msg("case %zu: got %d (%s)", i, r, vela_errmsg());
		if (!strstr(vela_errmsg(), model[i].needle))
			fail_msg("case %zu: message \"%s\" lacks \"%s\"", i, vela_errmsg(), model[i].needle);
		assert_non_null(strstr(diag.data, model[i].needle));
		assert_null(m);
		strbuf_free(&diag);
		vmx_file_free(g);
	}
}

static void all_problems_are_listed(void **state)
{
	(void)state;
	struct vmx_file *f = parse("memsize = \"3\"\nnumvcpus = \"x\"\nautostart = \"perhaps\"\n");
	struct vmx_model *m = NULL;
	struct strbuf diag = { 0 };
	assert_int_equal(build(f, &m, &diag), -VELA_E_CONFIG);
	assert_non_null(strstr(vela_errmsg(), "and 2 more problems"));
	assert_non_null(strstr(diag.data, ":1: memsize"));
	assert_non_null(strstr(diag.data, ":2: numvcpus"));
	assert_non_null(strstr(diag.data, ":3: autostart"));
	strbuf_free(&diag);
	vmx_file_free(f);
}

static void datastore_paths_and_file_checks(void **state)
{
	(void)state;
	char *ds = xasprintf("%s/datastores/store1/vmA", tmpdir);
	assert_int_equal(mkdir_p(ds, 0755), 0);
	char *img = xasprintf("%s/a.img", ds);
	close(open(img, O_CREAT | O_WRONLY, 0644));
	setenv("VELA_HOME", tmpdir, 1);
	struct vmx_file *f = parse("memsize = \"64\"\nvirtio0:3.present = \"TRUE\"\nvirtio0:3.fileName = \"[store1] vmA/a.img\"\n");
	struct vmx_model *m = NULL;
	assert_int_equal(build(f, &m, NULL), 0);
	assert_int_equal(m->n_disks, 1);
	assert_string_equal(m->disks[0].path, img);
	assert_int_equal(m->disks[0].bus, VMX_BUS_VIRTIO);
	vmx_model_free(m);
	vmx_file_free(f);
	unsetenv("VELA_HOME");

	/* Without file checks a missing disk is fine (config from elsewhere). */
	f = parse("memsize = \"64\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"gone.vmdk\"\n");
	struct vmx_model_opts o = { .check_files = false };
	char *path = xasprintf("%s/x.vmx", tmpdir);
	assert_int_equal(vmx_model_build(f, path, &o, NULL, &m), 0);
	vmx_model_free(m);
	vmx_file_free(f);
	free(path);
	free(img);
	free(ds);
}

static void uuid_and_mac_helpers(void **state)
{
	(void)state;
	uint8_t u[16], v[16];
	char buf[64];
	assert_int_equal(vmx_uuid_parse("56 4d 1a 2b 3c 4d 5e 6f-70 81 92 a3 b4 c5 d6 e7", u), 0);
	vmx_uuid_format_canonical(u, buf, sizeof buf);
	assert_string_equal(buf, "564d1a2b-3c4d-5e6f-7081-92a3b4c5d6e7");
	assert_int_equal(vmx_uuid_parse(buf, v), 0);
	assert_memory_equal(u, v, 16);
	vmx_uuid_format_classic(u, buf, sizeof buf);
	assert_string_equal(buf, "56 4d 1a 2b 3c 4d 5e 6f-70 81 92 a3 b4 c5 d6 e7");
	assert_int_equal(vmx_uuid_parse("56 4d 1a", u), -VELA_E_INVAL);
	assert_int_equal(vmx_uuid_parse("zz 4d 1a 2b 3c 4d 5e 6f-70 81 92 a3 b4 c5 d6 e7", u), -VELA_E_INVAL);

	char mac[18], mac2[18];
	vmx_mac_generate(u, 0, mac);
	vmx_mac_generate(u, 1, mac2);
	assert_true(str_starts_with(mac, "02:56:4c:"));
	assert_string_not_equal(mac, mac2);
	unsigned b3;
	sscanf(mac + 9, "%2x", &b3);
	assert_true(b3 < 0x80);                 /* generated half */
	assert_int_equal(vmx_mac_check_static(mac), -VELA_E_RANGE);
	assert_int_equal(vmx_mac_check_static("02:56:4c:80:00:00"), 0);
	assert_int_equal(vmx_mac_check_static("00:50:56:3f:ff:ff"), 0);
	assert_int_equal(vmx_mac_check_static("00:50:56:40:00:00"), -VELA_E_RANGE);
	assert_int_equal(vmx_mac_check_static("00:50:56:00:00"), -VELA_E_INVAL);
}

static void identity_first_power_on_and_move(void **state)
{
	(void)state;
	char *path = xasprintf("%s/id.vmx", tmpdir);
	const char *text = "memsize = \"64\"\nethernet0.present = \"TRUE\"\nethernet1.present = \"TRUE\"\n"
			   "ethernet1.addressType = \"static\"\nethernet1.address = \"02:56:4c:80:00:09\"\n";
	assert_int_equal(write_file_atomic(path, text, strlen(text)), 0);
	struct vmx_file *f = NULL;
	assert_int_equal(vmx_file_load(path, &f), 0);
	bool changed = false;
	assert_int_equal(vmx_identity_update(f, path, VMX_UUID_ASK, &changed), 0);
	assert_true(changed);
	assert_non_null(vmx_get(f, "uuid.bios"));
	assert_non_null(vmx_get(f, "uuid.location"));
	const char *mac = vmx_get(f, "ethernet0.generatedAddress");
	assert_non_null(mac);
	assert_null(vmx_get(f, "ethernet1.generatedAddress"));    /* static NIC untouched */
	assert_int_equal(vmx_file_save(f, path), 0);
	char *bios = xstrdup(vmx_get(f, "uuid.bios"));
	char *mac0 = xstrdup(mac);
	vmx_file_free(f);

	/* Second power-on in place: nothing changes. */
	assert_int_equal(vmx_file_load(path, &f), 0);
	assert_int_equal(vmx_identity_update(f, path, VMX_UUID_ASK, &changed), 0);
	assert_false(vmx_file_dirty(f));
	vmx_file_free(f);

	/* Copied elsewhere: the question, then keep or create. */
	char *moved = xasprintf("%s/copy.vmx", tmpdir);
	char *data;
	size_t len;
	assert_int_equal(read_file(path, 1 << 20, &data, &len), 0);
	assert_int_equal(write_file_atomic(moved, data, len), 0);
	assert_int_equal(vmx_file_load(moved, &f), 0);
	assert_int_equal(vmx_identity_update(f, moved, VMX_UUID_ASK, &changed), -VELA_E_NEEDINPUT);
	assert_non_null(strstr(vela_errmsg(), "moved or was copied"));
	assert_false(vmx_file_dirty(f));
	assert_int_equal(vmx_identity_update(f, moved, VMX_UUID_KEEP, &changed), 0);
	assert_string_equal(vmx_get(f, "uuid.bios"), bios);
	assert_string_equal(vmx_get(f, "ethernet0.generatedAddress"), mac0);
	vmx_file_free(f);

	assert_int_equal(vmx_file_load(moved, &f), 0);
	assert_int_equal(vmx_identity_update(f, moved, VMX_UUID_CREATE, &changed), 0);
	assert_string_not_equal(vmx_get(f, "uuid.bios"), bios);
	assert_string_not_equal(vmx_get(f, "ethernet0.generatedAddress"), mac0);
	vmx_file_free(f);
	free(data);
	free(moved);
	free(bios);
	free(mac0);
	free(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(classic_file_parses),
		cmocka_unit_test(round_trip_is_byte_identical),
		cmocka_unit_test(set_changes_only_that_line),
		cmocka_unit_test(malformed_files_are_refused),
		cmocka_unit_test(all_problems_are_listed),
		cmocka_unit_test(datastore_paths_and_file_checks),
		cmocka_unit_test(uuid_and_mac_helpers),
		cmocka_unit_test(identity_first_power_on_and_move),
	};
	return cmocka_run_group_tests_name("vmx", tests, setup, teardown);
}
