/* Unit tests: src/common. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>
#include <sys/stat.h>

#include "common.h"

static void error_table_is_complete_and_unique(void **state)
{
	(void)state;
	size_t n = 0;
	for (const struct vela_errinfo *e = vela_error_table; e->name; e++, n++) {
		assert_int_equal(e->code, (int)n + 1);      /* dense, stable numbering */
		assert_true(str_starts_with(e->name, "VELA_E_"));
		assert_non_null(e->message);
		assert_true(e->errno_value > 0);
		for (const struct vela_errinfo *o = vela_error_table; o != e; o++)
			assert_string_not_equal(o->name, e->name);
	}
	assert_true(n >= 40);
	assert_string_equal(vela_errname(-VELA_E_NOTFOUND), "VELA_E_NOTFOUND");
	assert_string_equal(vela_errname(9999), "VELA_E_UNKNOWN");
}

static void error_messages_carry_context(void **state)
{
	(void)state;
	int r = vela_error(VELA_E_IO, "read %s", "x.img");
	assert_int_equal(r, -VELA_E_IO);
	assert_string_equal(vela_errmsg(), "read x.img");
	r = vela_error_context(r, "open disk");
	assert_int_equal(r, -VELA_E_IO);
	assert_string_equal(vela_errmsg(), "open disk: read x.img");
	r = vela_error_errno(ENOENT, "open %s", "/nope");
	assert_int_equal(r, -VELA_E_NOTFOUND);
	assert_string_equal(vela_errmsg(), "open /nope: No such file or directory");
	/* Codes outside the table become INTERNAL, never 0. */
	assert_int_equal(vela_error(0, "x"), -VELA_E_INTERNAL);
}

static void parsers(void **state)
{
	(void)state;
	bool b;
	uint64_t v;
	const char *yes[] = { "TRUE", "true", "yes", "1", "on" };
	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		assert_int_equal(parse_bool(yes[i], &b), 0);
		assert_true(b);
	}
	assert_int_equal(parse_bool("FALSE", &b), 0);
	assert_false(b);
	assert_int_equal(parse_bool("maybe", &b), -VELA_E_INVAL);
	assert_int_equal(parse_u64("123", 1000, &v), 0);
	assert_int_equal(v, 123);
	assert_int_equal(parse_u64("1001", 1000, &v), -VELA_E_RANGE);
	assert_int_equal(parse_u64("12a", 1000, &v), -VELA_E_INVAL);
	assert_int_equal(parse_u64("", 1000, &v), -VELA_E_INVAL);
	assert_int_equal(parse_u64("99999999999999999999999", UINT64_MAX, &v), -VELA_E_RANGE);
	assert_int_equal(parse_size("64m", &v), 0);
	assert_int_equal(v, 64ull << 20);
	assert_int_equal(parse_size("2T", &v), 0);
	assert_int_equal(v, 2ull << 40);
	assert_int_equal(parse_size("17179869184t", &v), -VELA_E_RANGE);
	assert_int_equal(parse_size("5x", &v), -VELA_E_INVAL);
}

static void base64_round_trip(void **state)
{
	(void)state;
	const char *cases[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	const char *enc[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char *e = base64_encode(cases[i], strlen(cases[i]));
		assert_string_equal(e, enc[i]);
		void *d;
		size_t n;
		assert_int_equal(base64_decode(e, &d, &n), 0);
		assert_int_equal(n, strlen(cases[i]));
		assert_memory_equal(d, cases[i], n);
		free(d);
		free(e);
	}
	void *d;
	size_t n;
	assert_int_equal(base64_decode("Zm9", &d, &n), -VELA_E_INVAL);
	assert_int_equal(base64_decode("Zm=v", &d, &n), -VELA_E_INVAL);
	assert_int_equal(base64_decode("Z!9v", &d, &n), -VELA_E_INVAL);
}

static void paths(void **state)
{
	(void)state;
	char *p;
	setenv("VELA_HOME", "/srv/vela", 1);
	assert_int_equal(vela_resolve_path("[local] vm/a.vmdk", "/x", &p), 0);
	assert_string_equal(p, "/srv/vela/datastores/local/vm/a.vmdk");
	free(p);
	assert_int_equal(vela_resolve_path("disk.img", "/vms/a", &p), 0);
	assert_string_equal(p, "/vms/a/disk.img");
	free(p);
	assert_int_equal(vela_resolve_path("/abs/disk.img", "/vms/a", &p), 0);
	assert_string_equal(p, "/abs/disk.img");
	free(p);
	assert_int_equal(vela_resolve_path("[..] x", "/", &p), -VELA_E_BADNAME);
	assert_int_equal(vela_resolve_path("[a/b] x", "/", &p), -VELA_E_BADNAME);
	assert_int_equal(vela_resolve_path("[nobracket x", "/", &p), -VELA_E_INVAL);
	assert_string_equal(vela_run_root(), "/srv/vela/run");
	unsetenv("VELA_HOME");
	assert_string_equal(vela_home(), "/var/lib/vela");
	assert_string_equal(vela_run_root(), "/run/vela");
	p = path_dirname("/a/b/c.vmx");
	assert_string_equal(p, "/a/b");
	free(p);
	p = path_dirname("c.vmx");
	assert_string_equal(p, ".");
	free(p);
}

static void atomic_write_and_read(void **state)
{
	(void)state;
	char dir[] = "/tmp/vela-unit-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char *f = xasprintf("%s/file", dir);
	assert_int_equal(write_file_atomic(f, "hello", 5), 0);
	chmod(f, 0600);
	assert_int_equal(write_file_atomic(f, "world!", 6), 0);
	struct stat st;
	assert_int_equal(stat(f, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);   /* mode kept */
	char *data;
	size_t len;
	assert_int_equal(read_file(f, 100, &data, &len), 0);
	assert_int_equal(len, 6);
	assert_string_equal(data, "world!");
	free(data);
	assert_int_equal(read_file(f, 3, &data, &len), -VELA_E_TOOBIG);
	assert_int_equal(read_file("/nonexistent/x", 3, &data, &len), -VELA_E_NOTFOUND);
	unlink(f);
	rmdir(dir);
	free(f);
}

static int fired[3];
static void on_timer(struct vela_loop *loop, uint64_t id, void *opaque)
{
	(void)id;
	int *slot = opaque;
	*slot = (int)(time_mono_ms() & 0x7fffffff);
	if (slot == &fired[2])
		vela_loop_stop(loop);
}

static void loop_timers_fire_in_order(void **state)
{
	(void)state;
	struct vela_loop *loop = vela_loop_new();
	assert_non_null(loop);
	vela_loop_add_timer(loop, 30, on_timer, &fired[1]);
	uint64_t cancelled = vela_loop_add_timer(loop, 10, on_timer, &fired[0]);
	vela_loop_add_timer(loop, 60, on_timer, &fired[2]);
	vela_loop_del_timer(loop, cancelled);
	assert_int_equal(vela_loop_run(loop), 0);
	assert_int_equal(fired[0], 0);
	assert_true(fired[1] > 0 && fired[2] >= fired[1]);
	vela_loop_free(loop);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(error_table_is_complete_and_unique),
		cmocka_unit_test(error_messages_carry_context),
		cmocka_unit_test(parsers),
		cmocka_unit_test(base64_round_trip),
		cmocka_unit_test(paths),
		cmocka_unit_test(atomic_write_and_read),
		cmocka_unit_test(loop_timers_fire_in_order),
	};
	return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}
