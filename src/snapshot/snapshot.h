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

/* Take a snapshot: *out {name, disks (how many), live, skipped: [{disk,
 * mode}] (independent disks are not in snapshots)}. */
int snapshot_create(const char *vmx, const char *name, const char *description, json_t **out);
/* The tree, in file order: [{name, description, created, uid, parent (0 =
 * a root), current, disks: {addr: image}}]. */
int snapshot_list(const char *vmx, json_t **out);
/* Go back to a snapshot (the VM must be off: disk snapshots hold no memory
 * state); images nothing needs any more are dropped. */
int snapshot_revert(const char *vmx, const char *name);
/* Drop a snapshot, merging its image with the one image built on it (live
 * when that is in the running chain: *was_live, may be NULL). */
int snapshot_delete(const char *vmx, const char *name, bool *was_live);

#endif /* VELA_SNAPSHOT_H */
