/* Unit tests: backup retention with incremental chains (src/backup) and the
 * changed-block map (src/blk/cbt.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "blk.h"
#include "backup.h"

static char dir[64];

static void make_backup(const char *name, const char *parent)
{
	CLEANUP_FREE char *d = xasprintf("%s/%s", dir, name);
	assert_int_equal(mkdir(d, 0755), 0);
	CLEANUP_FREE char *m = xasprintf("%s/manifest.json", d);
	CLEANUP_FREE char *text = parent
		? xasprintf("{\"vmx\":\"bk.vmx\",\"files\":[],\"disks\":[{\"disk\":\"scsi0:0\",\"file\":\"d.vmdk\","
			    "\"parent\":\"../%s/d.vmdk\"}]}", parent)
		: xstrdup("{\"vmx\":\"bk.vmx\",\"files\":[],\"disks\":[{\"disk\":\"scsi0:0\",\"file\":\"d.vmdk\"}]}");
	assert_int_equal(write_file_atomic(m, text, strlen(text)), 0);
}

static bool exists(const char *name)
{
	CLEANUP_FREE char *p = xasprintf("%s/%s", dir, name);
	return access(p, F_OK) == 0;
}

static void retention_keeps_what_incrementals_build_on(void **s)
{
	(void)s;
	snprintf(dir, sizeof dir, "/tmp/vela-prune-XXXXXX");
	assert_non_null(mkdtemp(dir));
	make_backup("bk-20260101-000000", NULL);
	make_backup("bk-20260102-000000", "bk-20260101-000000");
	make_backup("bk-20260103-000000", "bk-20260102-000000");
	make_backup("bk-20260104-000000", NULL);
	make_backup("bk-20260105-000000", "bk-20260104-000000");
	make_backup("other-20260101-000000", NULL);   /* another VM's */
	json_t *gone = NULL;
	/* Keep 2: the 5th and 4th (its base); the chain 1-2-3 goes. */
	assert_int_equal(backup_prune(dir, "bk", 2, &gone), 0);
	assert_int_equal(json_array_size(gone), 3);
	json_decref(gone);
	assert_true(exists("bk-20260105-000000") && exists("bk-20260104-000000"));
	assert_false(exists("bk-20260103-000000") || exists("bk-20260101-000000"));
	assert_true(exists("other-20260101-000000"));
	/* Keep 1: the 5th still needs the 4th. */
	assert_int_equal(backup_prune(dir, "bk", 1, &gone), 0);
	assert_int_equal(json_array_size(gone), 0);
	json_decref(gone);
	assert_true(exists("bk-20260104-000000"));
	CLEANUP_FREE char *cmd = xasprintf("rm -rf %s", dir);
	assert_int_equal(system(cmd), 0);
}

static void changed_block_map(void **s)
{
	(void)s;
	char d[] = "/tmp/vela-ctk-XXXXXX";
	assert_non_null(mkdtemp(d));
	CLEANUP_FREE char *path = xasprintf("%s/disk.ctk", d);
	CLEANUP_FREE char *top = xasprintf("%s/disk.img", d);   /* stands for the disk's top image */
	assert_int_equal(write_file_atomic(top, "disk", 4), 0);
	uint64_t size = 10ull << 20;   /* 160 granules */
	struct blk_cbt *c = NULL;
	struct blk_cbt_stamp st;
	blk_cbt_stamp_of(top, &st);
	assert_int_equal(blk_cbt_open(path, size, &st, &c), 0);
	blk_cbt_mark(c, 0, 1);
	blk_cbt_mark(c, BLK_CBT_GRANULE - 1, 2);            /* two granules */
	blk_cbt_mark(c, 5 * BLK_CBT_GRANULE, 3 * BLK_CBT_GRANULE);
	blk_cbt_mark(c, size + 4096, 512);                  /* beyond the end: nothing */
	struct blk_cbt_epoch e;
	assert_int_equal(blk_cbt_rotate(c, &e), 0);
	assert_int_equal(blk_cbt_count(&e), 5);
	char first[BLK_CBT_EPOCH_LEN + 1];
	memcpy(first, e.next, sizeof first);
	assert_string_not_equal(e.prev, e.next);
	blk_cbt_epoch_clear(&e);
	blk_cbt_mark(c, 9 * BLK_CBT_GRANULE, 1);
	assert_int_equal(blk_cbt_close(c, top), 0);   /* clean */
	/* A clean map comes back with its epoch and marks. */
	assert_int_equal(blk_cbt_rotate_offline(path, size, top, &e), 0);
	assert_string_equal(e.prev, first);
	assert_int_equal(blk_cbt_count(&e), 1);
	/* The disk written by another tool meanwhile: not trusted. */
	char second[BLK_CBT_EPOCH_LEN + 1];
	memcpy(second, e.next, sizeof second);
	blk_cbt_epoch_clear(&e);
	usleep(20000);
	assert_int_equal(write_file_atomic(top, "DISK", 4), 0);
	assert_int_equal(blk_cbt_rotate_offline(path, size, top, &e), 0);
	assert_string_not_equal(e.prev, second);
	assert_int_equal(blk_cbt_count(&e), 0);
	/* Untouched since: trusted again. */
	memcpy(second, e.next, sizeof second);
	blk_cbt_epoch_clear(&e);
	assert_int_equal(blk_cbt_rotate_offline(path, size, top, &e), 0);
	assert_string_equal(e.prev, second);
	blk_cbt_epoch_clear(&e);
	/* Opened and never closed (a crash): the next epoch is unknown. */
	blk_cbt_stamp_of(top, &st);
	assert_int_equal(blk_cbt_open(path, size, &st, &c), 0);
	char running[BLK_CBT_EPOCH_LEN + 1];
	assert_int_equal(blk_cbt_rotate(c, &e), 0);
	memcpy(running, e.next, sizeof running);
	blk_cbt_epoch_clear(&e);
	blk_cbt_free(c);
	assert_int_equal(blk_cbt_rotate_offline(path, size, top, &e), 0);
	assert_string_not_equal(e.prev, running);
	blk_cbt_epoch_clear(&e);
	/* Another disk size: not this disk's map. */
	assert_int_equal(blk_cbt_rotate_offline(path, size * 2, top, &e), 0);
	assert_int_equal(blk_cbt_count(&e), 0);
	blk_cbt_epoch_clear(&e);
	unlink(path);
	unlink(top);
	rmdir(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(retention_keeps_what_incrementals_build_on),
		cmocka_unit_test(changed_block_map),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
