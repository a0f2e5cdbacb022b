/* libFuzzer target: the files Vela reads back that someone else may have
 * damaged or forged - a suspended state's trailer, a changed-block map, a
 * backup's manifest.  Each is written to a file and read the way Vela
 * reads it; nothing may crash, hang or leak, and what is accepted must be
 * consistent. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "blk.h"
#include "backup.h"
#include "vmstate.h"

static char dir[64];

static void remove_dir(void)
{
	rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!dir[0]) {
		snprintf(dir, sizeof dir, "/tmp/vela-fuzz-state-%d", (int)getpid());
		mkdir(dir, 0700);
		atexit(remove_dir);
		vela_log_set_level(VELA_LOG_ERROR);
	}
	CLEANUP_FREE char *p = xasprintf("%s/f", dir);
	if (write_file_atomic(p, data, size) < 0)
		return 0;
	/* Suspended state. */
	json_t *meta = NULL;
	uint64_t stream = 0;
	if (vmstate_read(p, &meta, &stream) == 0) {
		if (stream >= size || !json_is_object(meta))
			__builtin_trap();
		json_decref(meta);
	}
	/* Changed-block map, for a disk of the size the bytes claim (bounded). */
	uint64_t disk = size >= 16 ? (le64_get(data + 8) & ((1ull << 30) - 1)) : 1 << 20;
	struct blk_cbt_epoch e;
	if (blk_cbt_rotate_offline(p, disk, p, &e) == 0) {
		if (strlen(e.prev) != BLK_CBT_EPOCH_LEN || blk_cbt_count(&e) > e.nbytes * 8)
			__builtin_trap();
		blk_cbt_epoch_clear(&e);
	}
	/* Backup manifest. */
	CLEANUP_FREE char *b = xasprintf("%s/b", dir);
	mkdir(b, 0700);
	CLEANUP_FREE char *m = xasprintf("%s/manifest.json", b);
	if (write_file_atomic(m, data, size) == 0) {
		json_t *out = NULL;
		if (backup_verify(b, &out) == 0)
			json_decref(out);
		json_t *gone = NULL;
		if (backup_prune(dir, "b", 1, &gone) == 0)
			json_decref(gone);
	}
	unlink(m);
	rmdir(b);
	unlink(p);
	return 0;
}
