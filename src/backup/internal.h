/* internal.h - what backup.c shares with the rest of this folder (mount.c). */
#ifndef VELA_BACKUP_INTERNAL_H
#define VELA_BACKUP_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>

/* manifest.json of a backup folder, checked for the members Vela writes. */
int backup_manifest_load(const char *backup, json_t **out);
/* A name from a manifest must stay inside the backup's folder. */
bool backup_plain_name(const char *s);

#endif
