/*
 * disks.h - the VM's disks as the supervisor serves them (private to
 * src/vmx-sup).  Every hard disk of the VM is opened here, through Vela's
 * disk engine, with the redo log its mode asks for, and served to QEMU on a
 * socket in the VM's runtime folder: vhost-user-blk for virtio disks, NBD
 * for disks behind an emulated controller.
 */
#ifndef VELA_VMXSUP_DISKS_H
#define VELA_VMXSUP_DISKS_H

#include <jansson.h>
#include <stdbool.h>

#include "vmx.h"

struct sup_disks;

/*
 * Open and serve every hard disk of the model (CD-ROMs stay with QEMU).
 * Disk modes: nonpersistent disks get a fresh temporary redo log, undoable
 * and append disks continue (or start) their redo log; all in vm_dir.
 * sockets(ds) then names the socket of each model disk (NULL for CD-ROMs).
 */
enum {
	SUP_DISKS_RESUME = 1,      /* a suspended session continues: its temporary logs too */
	SUP_DISKS_THROWAWAY = 2,   /* repeatable resume: the session writes to a log dropped at power-off */
};
int sup_disks_open(const struct vmx_model *m, const char *vm_dir, const char *run_dir, unsigned flags,
		   struct sup_disks **out);
/* The saved state is loaded: the modes apply at power-off again. */
void sup_disks_resumed(struct sup_disks *ds);
/* Suspend: stop serving, close every disk, keep every log; *stamps gets
 * each disk's vmstate_disk_stamp. */
int sup_disks_suspend(struct sup_disks *ds, json_t **stamps);
char *const *sup_disks_sockets(struct sup_disks *ds);

/* Called whenever a live operation moves a disk's top (the supervisor
 * records it in the .vmx at once); an error stops the operation there. */
typedef int (*sup_disks_top_fn)(const char *addr, const char *top, void *opaque);
void sup_disks_on_top_changed(struct sup_disks *ds, sup_disks_top_fn fn, void *opaque);

/*
 * The VM is off: stop serving, flush and close every disk, then apply the
 * modes that need nobody (nonpersistent: the redo log goes; append: it
 * stays).  When an undoable disk has changes, *question gets the text to
 * ask (commit, discard or keep) and the answer goes to sup_disks_answer.
 */
int sup_disks_power_off(struct sup_disks *ds, char **question);
int sup_disks_answer(struct sup_disks *ds, const char *choice);

/* Live operations on the disk at a .vmx address ("scsi0:0"). */
int sup_disks_addredo(struct sup_disks *ds, const char *addr, char **new_top);
/* addredo and a new changed-block epoch at the same instant (ctkEnabled). */
struct blk_cbt_epoch;
int sup_disks_addredo_rotate(struct sup_disks *ds, const char *addr, char **new_top, struct blk_cbt_epoch *epoch);
/* freeze: hold guest I/O for the whole merge (no helper redo log). */
int sup_disks_commit(struct sup_disks *ds, const char *addr, unsigned level, bool freeze, char **new_top);
/*
 * Backup/file-level restore: a fresh redo log goes on the disk and the image
 * under it (*frozen) is exported read-only over NBD on listen (HOST:PORT,
 * :PORT or a socket path; export name = the disk id, e.g. scsi0-0).
 * export_end stops it and, with consolidate, commits the redo log back.
 */
int sup_disks_export(struct sup_disks *ds, const char *addr, const char *listen, char **frozen, char **new_top);
int sup_disks_export_end(struct sup_disks *ds, const char *addr, bool consolidate, char **new_top);
int sup_disks_set_limits(struct sup_disks *ds, const char *addr, json_t *limits);
/* {addr: {file, depth, mode, rd_ops, ...}} for every disk. */
json_t *sup_disks_stats(struct sup_disks *ds);

void sup_disks_free(struct sup_disks *ds);

#endif
