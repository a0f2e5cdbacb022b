/* Unit tests: src/engine (accelerator choice, QEMU argv, QMP). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

#include "common.h"
#include "engine.h"
#include "vmx.h"

static char tmpdir[64];

static void make_file(const char *name, const void *head, size_t n, off_t size)
{
	char *p = xasprintf("%s/%s", tmpdir, name);
	int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
	assert_true(fd >= 0);
	if (n)
		assert_int_equal(write(fd, head, n), (ssize_t)n);
	if (size)
		assert_int_equal(ftruncate(fd, size), 0);
	close(fd);
	free(p);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof tmpdir, "/tmp/vela-engine-XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	make_file("raw.img", "hello", 5, 1 << 20);
	make_file("a,b.img", "x", 1, 0);
	make_file("sparse.vmdk", "KDMV", 4, 4096);
	make_file("q.qcow2", "QFI\xfb", 4, 4096);
	make_file("d.vmdk", "# Disk DescriptorFile\n", 22, 0);
	make_file("dyn.vhd", "conectix", 8, 4096);
	/* Fixed VHD: footer at the end. */
	char *p = xasprintf("%s/fixed.vhd", tmpdir);
	int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
	assert_int_equal(pwrite(fd, "conectix", 8, 4096 - 512), 8);
	assert_int_equal(ftruncate(fd, 4096), 0);
	close(fd);
	free(p);
	make_file("kernel", "k", 1, 0);
	make_file("cd.iso", "iso", 3, 0);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	char *cmd = xasprintf("rm -rf %s", tmpdir);
	int r = system(cmd);
	free(cmd);
	return r ? -1 : 0;
}

static void cpuinfo_and_accel_choice(void **state)
{
	(void)state;
	assert_true(engine_cpuinfo_has_virt("processor\t: 0\nflags\t\t: fpu vme vmx sse\n"));
	assert_true(engine_cpuinfo_has_virt("flags\t\t: fpu svm\n"));
	assert_false(engine_cpuinfo_has_virt("flags\t\t: fpu hypervisor vmxnet\n"));
	assert_false(engine_cpuinfo_has_virt("model name\t: vmx svm\nflags\t: fpu\n"));

	struct engine_host_virt hw = { .cpu_flag = true, .kvm_usable = true };
	struct engine_host_virt fake_kvm = { .cpu_flag = false, .kvm_usable = true };   /* this dev machine */
	struct engine_host_virt none = { 0 };
	enum engine_accel a;
	char why[256];
	assert_int_equal(engine_choose_accel(VMX_ACCEL_AUTO, &hw, &a, why, sizeof why), 0);
	assert_int_equal(a, ENGINE_ACCEL_KVM);
	assert_int_equal(engine_choose_accel(VMX_ACCEL_AUTO, &fake_kvm, &a, why, sizeof why), 0);
	assert_int_equal(a, ENGINE_ACCEL_TCG);
	assert_non_null(strstr(why, "no vmx/svm"));
	assert_int_equal(engine_choose_accel(VMX_ACCEL_AUTO, &none, &a, why, sizeof why), 0);
	assert_int_equal(a, ENGINE_ACCEL_TCG);
	assert_int_equal(engine_choose_accel(VMX_ACCEL_TCG, &hw, &a, why, sizeof why), 0);
	assert_int_equal(a, ENGINE_ACCEL_TCG);
	assert_int_equal(engine_choose_accel(VMX_ACCEL_KVM, &fake_kvm, &a, why, sizeof why), -VELA_E_NOTSUP);
	assert_non_null(strstr(vela_errmsg(), "engine.accel = kvm"));
}

static void format_probe(void **state)
{
	(void)state;
	static const char *const cases[][2] = {
		{ "raw.img", "raw" }, { "sparse.vmdk", "vmdk" }, { "d.vmdk", "vmdk" },
		{ "q.qcow2", "qcow2" }, { "dyn.vhd", "vpc" }, { "fixed.vhd", "vpc" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *p = xasprintf("%s/%s", tmpdir, cases[i][0]);
		const char *fmt = NULL;
		assert_int_equal(engine_probe_format(p, &fmt), 0);
		assert_string_equal(fmt, cases[i][1]);
		free(p);
	}
	const char *fmt;
	assert_int_equal(engine_probe_format("/nonexistent/disk", &fmt), -VELA_E_NOTFOUND);
}

static struct vmx_model *model(const char *text)
{
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	assert_int_equal(vmx_file_parse("t.vmx", text, strlen(text), &f), 0);
	char *path = xasprintf("%s/t.vmx", tmpdir);
	if (vmx_model_build(f, path, NULL, NULL, &m) < 0)
		fail_msg("%s", vela_errmsg());
	free(path);
	vmx_file_free(f);
	return m;
}

/* argv as one string with \x01 between arguments, for substring checks. */
static char *argv_join(char **argv)
{
	struct strbuf sb = { 0 };
	for (char **p = argv; *p; p++) {
		strbuf_puts(&sb, "\x01");
		strbuf_puts(&sb, *p);
	}
	strbuf_puts(&sb, "\x01");
	return strbuf_steal(&sb);
}

static void expect_arg(const char *joined, const char *flag, const char *value)
{
	char *needle = xasprintf("\x01%s\x01%s\x01", flag, value);
	if (!strstr(joined, needle))
		fail_msg("missing argument: %s %s", flag, value);
	free(needle);
}

static void argv_for_a_virtio_vm(void **state)
{
	(void)state;
	struct vmx_model *m = model(
		"displayName = \"web,1\"\nmemsize = \"512\"\nnumvcpus = \"2\"\n"
		"uuid.bios = \"56 4d 1a 2b 3c 4d 5e 6f-70 81 92 a3 b4 c5 d6 e7\"\n"
		"scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"raw.img\"\n"
		"scsi0:1.present = \"TRUE\"\nscsi0:1.fileName = \"sparse.vmdk\"\nscsi0:1.mode = \"nonpersistent\"\n"
		"virtio0:0.present = \"TRUE\"\nvirtio0:0.fileName = \"a,b.img\"\n"
		"sata0.present = \"TRUE\"\nsata0:1.present = \"TRUE\"\nsata0:1.deviceType = \"cdrom-image\"\nsata0:1.fileName = \"cd.iso\"\n"
		"ethernet0.present = \"TRUE\"\nethernet0.generatedAddress = \"02:56:4c:00:00:01\"\n"
		"ethernet1.present = \"TRUE\"\nethernet1.virtualDev = \"vmxnet3\"\nethernet1.generatedAddress = \"02:56:4c:00:00:02\"\n"
		"serial0.present = \"TRUE\"\nserial0.fileType = \"console\"\n"
		"serial1.present = \"TRUE\"\nserial1.fileType = \"pipe\"\nserial1.fileName = \"/tmp/p1\"\n"
		"serial2.present = \"TRUE\"\nserial2.fileType = \"file\"\nserial2.fileName = \"com3.log\"\n"
		"boot.order = \"cdrom,disk\"\n");
	struct engine_runtime rt = { .accel = ENGINE_ACCEL_TCG, .qmp_fd = 7, .console_fd = 8, .vnc_socket = "/run/v/vnc.sock" };
	char **argv = NULL;
	struct strbuf notes = { 0 };
	assert_int_equal(engine_build_argv(m, &rt, &argv, &notes), 0);
	char *j = argv_join(argv);
	assert_string_equal(argv[0], "qemu-system-x86_64");
	expect_arg(j, "-name", "guest=web,,1,debug-threads=on");
	expect_arg(j, "-machine", "q35");
	expect_arg(j, "-accel", "tcg");
	expect_arg(j, "-m", "512");
	expect_arg(j, "-smp", "2");
	expect_arg(j, "-uuid", "564d1a2b-3c4d-5e6f-7081-92a3b4c5d6e7");
	expect_arg(j, "-chardev", "socket,id=qmp,fd=7");
	expect_arg(j, "-vnc", "unix:/run/v/vnc.sock");
	expect_arg(j, "-device", "virtio-scsi-pci,id=scsi0");
	char *d0 = xasprintf("if=none,id=drive-scsi0-0,format=raw,file=%s/raw.img,cache=writeback,discard=unmap", tmpdir);
	expect_arg(j, "-drive", d0);
	char *d1 = xasprintf("if=none,id=drive-scsi0-1,snapshot=on,format=vmdk,file=%s/sparse.vmdk,cache=writeback,discard=unmap", tmpdir);
	expect_arg(j, "-drive", d1);
	char *d2 = xasprintf("if=none,id=drive-virtio0-0,format=raw,file=%s/a,,b.img,cache=writeback,discard=unmap", tmpdir);
	expect_arg(j, "-drive", d2);
	/* boot.order = cdrom,disk: the CD-ROM boots first, then the disks in order. */
	expect_arg(j, "-device", "ide-cd,bus=sata0.1,drive=drive-sata0-1,id=sata0-1,bootindex=1");
	expect_arg(j, "-device", "scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0-0,id=scsi0-0,bootindex=2");
	expect_arg(j, "-device", "virtio-blk-pci,drive=drive-virtio0-0,id=virtio0-0,bootindex=4");
	expect_arg(j, "-device", "virtio-net-pci,netdev=net0,mac=02:56:4c:00:00:01,id=ethernet0");
	expect_arg(j, "-device", "vmxnet3,netdev=net1,mac=02:56:4c:00:00:02,id=ethernet1");
	expect_arg(j, "-netdev", "user,id=net0,restrict=on");
	expect_arg(j, "-chardev", "socket,id=serial0,fd=8");
	expect_arg(j, "-chardev", "socket,id=serial1,path=/tmp/p1,server=on,wait=off");
	char *s2 = xasprintf("file,id=serial2,path=%s/com3.log,append=on", tmpdir);
	expect_arg(j, "-chardev", s2);
	expect_arg(j, "-device", "isa-serial,chardev=serial1,index=1,id=com2");
	assert_null(strstr(j, "-kernel"));
	char *line = engine_argv_to_string(argv);
	assert_non_null(strstr(line, "qemu-system-x86_64 -name"));
	free(line);
	free(s2);
	free(d0);
	free(d1);
	free(d2);
	free(j);
	strbuf_free(&notes);
	engine_argv_free(argv);
	vmx_model_free(m);
}

static void argv_for_a_legacy_vm(void **state)
{
	(void)state;
	struct vmx_model *m = model(
		"memsize = \"128\"\nplatform.chipset = \"i440fx\"\n"
		"scsi0.present = \"TRUE\"\nscsi0.virtualDev = \"buslogic\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"raw.img\"\n"
		"ide0:1.present = \"TRUE\"\nide0:1.fileName = \"q.qcow2\"\n"
		"ide1:0.present = \"TRUE\"\nide1:0.deviceType = \"cdrom-image\"\nide1:0.startConnected = \"FALSE\"\nide1:0.fileName = \"cd.iso\"\n"
		"ethernet0.present = \"TRUE\"\nethernet0.virtualDev = \"vlance\"\nethernet0.generatedAddress = \"02:56:4c:00:00:03\"\n"
		"boot.kernel = \"kernel\"\nboot.cmdline = \"console=ttyS0 a=b,c\"\nengine.accel = \"kvm\"\n");
	struct engine_runtime rt = { .accel = ENGINE_ACCEL_KVM, .qmp_fd = 3, .console_fd = -1 };
	char **argv = NULL;
	struct strbuf notes = { 0 };
	assert_int_equal(engine_build_argv(m, &rt, &argv, &notes), 0);
	char *j = argv_join(argv);
	expect_arg(j, "-machine", "pc");
	expect_arg(j, "-accel", "kvm");
	expect_arg(j, "-cpu", "host");
	expect_arg(j, "-display", "none");
	expect_arg(j, "-device", "lsi53c895a,id=scsi0");
	assert_non_null(strstr(notes.data, "no BusLogic emulation"));
	expect_arg(j, "-device", "ide-hd,bus=ide.0,unit=1,drive=drive-ide0-1,id=ide0-1");
	expect_arg(j, "-drive", "if=none,id=drive-ide1-0,media=cdrom,readonly=on");   /* not connected: empty */
	expect_arg(j, "-device", "pcnet,netdev=net0,mac=02:56:4c:00:00:03,id=ethernet0");
	char *k = xasprintf("%s/kernel", tmpdir);
	expect_arg(j, "-kernel", k);
	expect_arg(j, "-append", "console=ttyS0 a=b,c");   /* -append is not an option list */
	assert_null(strstr(j, "bootindex"));                /* direct kernel boot */
	free(k);
	free(j);
	strbuf_free(&notes);
	engine_argv_free(argv);
	vmx_model_free(m);
}

/* Disks the supervisor serves: vhost-user-blk for virtio, NBD under an
 * emulated controller, CD-ROMs still opened by QEMU, guest RAM shared. */
static void argv_for_served_disks(void **state)
{
	(void)state;
	struct vmx_model *m = model(
		"memsize = \"512\"\nnumvcpus = \"4\"\n"
		"scsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\nscsi0:0.fileName = \"raw.img\"\n"
		"virtio0:0.present = \"TRUE\"\nvirtio0:0.fileName = \"a,b.img\"\n"
		"sata0.present = \"TRUE\"\nsata0:1.present = \"TRUE\"\nsata0:1.deviceType = \"cdrom-image\"\nsata0:1.fileName = \"cd.iso\"\n");
	char *socks[4] = { 0 };
	for (size_t i = 0; i < m->n_disks; i++)
		if (m->disks[i].type == VMX_DEV_DISK)
			socks[i] = xasprintf("/run/v/disk-%s.sock", m->disks[i].addr);
	struct engine_runtime rt = { .accel = ENGINE_ACCEL_TCG, .qmp_fd = 7, .console_fd = -1, .disk_sockets = socks };
	char **argv = NULL;
	struct strbuf notes = { 0 };
	assert_int_equal(engine_build_argv(m, &rt, &argv, &notes), 0);
	char *j = argv_join(argv);
	expect_arg(j, "-object", "memory-backend-memfd,id=ram0,size=512M,share=on");
	expect_arg(j, "-machine", "q35,memory-backend=ram0");
	expect_arg(j, "-chardev", "socket,id=vhost-virtio0-0,path=/run/v/disk-virtio0:0.sock");
	/* Devices may carry a bootindex after these. */
	assert_non_null(strstr(j, "\x01-device\x01vhost-user-blk-pci,chardev=vhost-virtio0-0,id=virtio0-0,num-queues=4"));
	expect_arg(j, "-drive", "if=none,id=drive-scsi0-0,driver=raw,file.driver=nbd,file.server.type=unix,"
				"file.server.path=/run/v/disk-scsi0:0.sock,file.export=scsi0-0,discard=unmap");
	assert_non_null(strstr(j, "\x01-device\x01scsi-hd,bus=scsi0.0,channel=0,scsi-id=0,lun=0,drive=drive-scsi0-0,id=scsi0-0"));
	/* No disk file reaches QEMU; the CD-ROM image does. */
	assert_null(strstr(j, "raw.img"));
	assert_null(strstr(j, "a,,b.img"));
	assert_non_null(strstr(j, "cd.iso"));
	for (size_t i = 0; i < 4; i++)
		free(socks[i]);
	free(j);
	strbuf_free(&notes);
	engine_argv_free(argv);
	vmx_model_free(m);
}

static void argv_refusals(void **state)
{
	(void)state;
	struct engine_runtime rt = { .accel = ENGINE_ACCEL_TCG, .qmp_fd = 3, .console_fd = -1 };
	char **argv = NULL;
	struct vmx_model *m = model("memsize = \"64\"\nscsi0.present = \"TRUE\"\nscsi0:0.present = \"TRUE\"\n"
				    "scsi0:0.fileName = \"raw.img\"\nscsi0:0.mode = \"undoable\"\n");
	assert_int_equal(engine_build_argv(m, &rt, &argv, NULL), -VELA_E_NOTSUP);
	assert_non_null(strstr(vela_errmsg(), "scsi0:0: disk mode undoable"));
	vmx_model_free(m);
	m = model("memsize = \"64\"\nscsi0.present = \"TRUE\"\nscsi0.virtualDev = \"lsilogic\"\nscsi0:9.present = \"TRUE\"\n"
		  "scsi0:9.fileName = \"raw.img\"\n");
	assert_int_equal(engine_build_argv(m, &rt, &argv, NULL), -VELA_E_CONFIG);
	assert_non_null(strstr(vela_errmsg(), "SCSI ids 0..6"));
	vmx_model_free(m);
	m = model("memsize = \"64\"\nethernet0.present = \"TRUE\"\n");   /* MAC not generated yet */
	assert_int_equal(engine_build_argv(m, &rt, &argv, NULL), -VELA_E_INTERNAL);
	vmx_model_free(m);
}

static void qmp_message_parsing(void **state)
{
	(void)state;
	struct qmp_msg m;
	const char *greet = "{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}";
	assert_int_equal(qmp_parse_message(greet, strlen(greet), &m), 0);
	assert_int_equal(m.kind, QMP_MSG_GREETING);
	qmp_msg_clear(&m);
	const char *ret = "{\"return\": {\"status\": \"running\"}, \"id\": 42}";
	assert_int_equal(qmp_parse_message(ret, strlen(ret), &m), 0);
	assert_int_equal(m.kind, QMP_MSG_RETURN);
	assert_int_equal(m.id, 42);
	assert_string_equal(json_string_value(json_object_get(m.data, "status")), "running");
	qmp_msg_clear(&m);
	const char *err = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": 3}";
	assert_int_equal(qmp_parse_message(err, strlen(err), &m), 0);
	assert_int_equal(m.kind, QMP_MSG_ERROR);
	assert_string_equal(m.err_desc, "nope");
	qmp_msg_clear(&m);
	const char *ev = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"SHUTDOWN\", "
			 "\"data\": {\"guest\": true, \"reason\": \"guest-shutdown\"}}";
	assert_int_equal(qmp_parse_message(ev, strlen(ev), &m), 0);
	assert_int_equal(m.kind, QMP_MSG_EVENT);
	assert_string_equal(m.event, "SHUTDOWN");
	assert_string_equal(json_string_value(json_object_get(m.data, "reason")), "guest-shutdown");
	qmp_msg_clear(&m);

	static const char *const bad[] = {
		"", "{", "[1,2]", "\"str\"", "{\"foo\": 1}", "{\"event\": 5}",
		"{\"error\": \"x\"}", "{\"error\": {\"class\": 1, \"desc\": \"d\"}}",
		"{\"return\": {}, \"return\": {}}",
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		assert_int_equal(qmp_parse_message(bad[i], strlen(bad[i]), &m), -VELA_E_PROTOCOL);
		assert_null(m.json);
	}
}

/* A scripted QMP peer: greeting, then answers commands, with events between. */
static void *fake_qemu(void *arg)
{
	int fd = *(int *)arg;
	char buf[4096];
	const char *greet = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";
	write_all(fd, greet, strlen(greet));
	for (int n = 0; n < 3; n++) {
		ssize_t k = read(fd, buf, sizeof buf - 1);
		if (k <= 0)
			break;
		buf[k] = '\0';
		json_t *req = json_loads(buf, 0, NULL);
		json_int_t id = json_integer_value(json_object_get(req, "id"));
		const char *cmd = json_string_value(json_object_get(req, "execute"));
		char out[512];
		if (strcmp(cmd, "bogus") == 0)
			snprintf(out, sizeof out, "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command bogus has not been found\"}, \"id\": %lld}\r\n", (long long)id);
		else
			/* An event arrives before the answer, split across writes. */
			snprintf(out, sizeof out, "{\"event\": \"STOP\"}\r\n\r\n{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
		size_t half = strlen(out) / 2;
		write_all(fd, out, half);
		usleep(1000);
		write_all(fd, out + half, strlen(out) - half);
		json_decref(req);
	}
	close(fd);
	return NULL;
}

static void qmp_client_against_a_peer(void **state)
{
	(void)state;
	int sv[2];
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	pthread_t t;
	pthread_create(&t, NULL, fake_qemu, &sv[1]);
	struct qmp *q = qmp_new(sv[0]);
	assert_int_equal(qmp_handshake(q, 2000), 0);
	json_t *ret = NULL;
	assert_int_equal(qmp_execute(q, "stop", NULL, &ret, 2000), 0);
	assert_true(json_is_object(ret));
	json_decref(ret);
	assert_int_equal(qmp_execute(q, "bogus", NULL, NULL, 2000), -VELA_E_QMP);
	assert_non_null(strstr(vela_errmsg(), "CommandNotFound"));
	struct qmp_msg ev;
	assert_true(qmp_next_event(q, &ev));     /* queued while waiting */
	assert_string_equal(ev.event, "STOP");
	qmp_msg_clear(&ev);
	assert_true(qmp_next_event(q, &ev));
	qmp_msg_clear(&ev);
	assert_false(qmp_next_event(q, &ev));
	pthread_join(t, NULL);
	/* Peer gone: commands fail with a connection error, not a hang. */
	assert_int_equal(qmp_execute(q, "cont", NULL, NULL, 2000), -VELA_E_CONNRESET);
	qmp_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(cpuinfo_and_accel_choice),
		cmocka_unit_test(format_probe),
		cmocka_unit_test(argv_for_a_virtio_vm),
		cmocka_unit_test(argv_for_a_legacy_vm),
		cmocka_unit_test(argv_for_served_disks),
		cmocka_unit_test(argv_refusals),
		cmocka_unit_test(qmp_message_parsing),
		cmocka_unit_test(qmp_client_against_a_peer),
	};
	return cmocka_run_group_tests_name("engine", tests, setup, teardown);
}
