/*
 * snapshot.h - disk snapshots of a VM, with a tree kept in the VM's .vmsd.
 *
 * A snapshot records, per disk in a snapshot mode (persistent, undoable,
 * nonpersistent, append), the image holding the disk's state at that
 * moment, and puts a redo log on top (live through the VM's supervisor
 * when it runs).  The .vmx path names the VM; the functions take no lock of
 * their own: callers serialize operations on one VM (velad's operation
 * lock; the CLI is one process).
 */
#ifndef VELA_SNAPSHOT_H
#define VELA_SNAPSHOT_H

#include <jansson.h>
#include <stdbool.h>

struct snapshot_opts {
	const char *description;
	/* A running VM's memory and device state too (<stem>-Snapshot<uid>.vmsn):
	 * reverting then brings the VM back running at that instant. */
	bool memory;
	/* Freeze the guest's file systems (agent) around a disk-only live
	 * snapshot: application-consistent instead of crash-consistent. */
	bool quiesce;
};

/* Take a snapshot: *out {name, disks (how many), live, memory, quiesced,
 * skipped: [{disk, mode}] (independent disks are not in snapshots)}. */
int snapshot_create(const char *vmx, const char *name, const struct snapshot_opts *o, json_t **out);
/* The tree, in file order: [{name, description, created, uid, parent (0 =
 * a root), current, memory, disks: {addr: image}}]. */
int snapshot_list(const char *vmx, json_t **out);
/*
 * Go back to a snapshot; images nothing needs any more are dropped.  A
 * disk-only snapshot needs the VM off.  One with memory powers a running VM
 * off first and leaves the VM suspended at the snapshot's instant
 * (*resume = true): the caller powers it on, which resumes it.
 */
int snapshot_revert(const char *vmx, const char *name, bool *resume);
/* Drop a snapshot, merging its image with the one image built on it (live
 * when that is in the running chain: *was_live, may be NULL). */
int snapshot_delete(const char *vmx, const char *name, bool *was_live);

#endif /* VELA_SNAPSHOT_H */
