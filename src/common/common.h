/*
 * common.h - small utilities shared by every Vela module: the error-code table
 * and thread-local error messages, logging, scope-based cleanup, strings, file
 * and socket helpers, time, paths and a tiny event loop.  Nothing VM-specific.
 *
 * Conventions used by every public function in Vela:
 *  - return 0 (or a non-negative count) on success and -VELA_E_xxx on failure;
 *  - on failure the thread-local message (vela_errmsg()) says what failed, with
 *    the operation first: "vmx_load: open /x.vmx: No such file or directory";
 *  - returned strings and buffers are owned by the caller unless the header
 *    says otherwise.
 */
#ifndef VELA_COMMON_H
#define VELA_COMMON_H

#include "vela-config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* ------------------------------------------------------------------ errors */

enum vela_errcode {
	VELA_OK = 0,
#define VELA_ERRDEF(name, num, eno, msg) VELA_E_##name = (num),
#include "errors.def"
#undef VELA_ERRDEF
};

struct vela_errinfo {
	int code;            /* positive number from the table */
	const char *name;    /* "VELA_E_NOTFOUND" */
	const char *errno_name; /* "ENOENT" */
	int errno_value;
	const char *message; /* "not found" */
};

/* The whole table, in number order, terminated by an entry with code 0. */
extern const struct vela_errinfo vela_error_table[];

/* Look up a code (positive or negative); NULL if it is not in the table. */
const struct vela_errinfo *vela_errinfo(int code);
/* Name of a code ("VELA_E_IO"), or "VELA_E_UNKNOWN". */
const char *vela_errname(int code);

/* Set the thread-local message (printf-style) and return -code (code given
 * positive or negative).  Use as: return vela_error(VELA_E_IO, "read %s", p); */
int vela_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix the current message with context ("start vm.vmx: <old message>")
 * and return code unchanged.  Callers add context, never swallow errors. */
int vela_error_context(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Map an errno value to the closest Vela code (positive). */
int vela_code_from_errno(int e);
/* Set the message from errno: "<context>: strerror(errno)"; returns -code. */
int vela_error_errno(int e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Thread-local message of the last failure (never NULL; owned by the library). */
const char *vela_errmsg(void);
void vela_error_clear(void);

/* ----------------------------------------------------------------- cleanup */

void vela_cleanup_free(void *p);
void vela_cleanup_close(int *fd);
void vela_cleanup_fclose(FILE **f);
#define CLEANUP_FREE __attribute__((cleanup(vela_cleanup_free)))
#define CLEANUP_CLOSE __attribute__((cleanup(vela_cleanup_close)))
#define CLEANUP_FCLOSE __attribute__((cleanup(vela_cleanup_fclose)))

/* Transfer ownership out of a CLEANUP_ variable. */
#define STEAL_PTR(p) ({ __typeof__(p) _tmp = (p); (p) = NULL; _tmp; })
#define STEAL_FD(fd) ({ int _tmp = (fd); (fd) = -1; _tmp; })

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* ----------------------------------------------------------------- logging */

enum vela_log_level { VELA_LOG_ERROR, VELA_LOG_WARN, VELA_LOG_INFO, VELA_LOG_DEBUG };

/* Log to stderr (default) and/or to a file.  Thread-safe. */
void vela_log(enum vela_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void vela_log_set_level(enum vela_log_level level);
void vela_log_set_stderr(bool on);
/* Open PATH as the log file, first rotating PATH -> PATH-1 ... PATH-<keep>
 * (the classic "vmware.log, vmware-1.log" scheme).  Files also rotate when
 * they grow past max_bytes. */
int vela_log_open_file(const char *path, unsigned keep, size_t max_bytes);
void vela_log_close_file(void);

#define log_error(...) vela_log(VELA_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) vela_log(VELA_LOG_WARN, __VA_ARGS__)
#define log_info(...) vela_log(VELA_LOG_INFO, __VA_ARGS__)
#define log_debug(...) vela_log(VELA_LOG_DEBUG, __VA_ARGS__)

/* -------------------------------------------------------------- byte order */

/* Numbers in on-disk and on-wire formats (VMDK little-endian; VHD, qcow2 and
 * NBD big-endian). */
static inline uint16_t be16_get(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32_get(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t be64_get(const uint8_t *p) { return (uint64_t)be32_get(p) << 32 | be32_get(p + 4); }
static inline void be16_put(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void be32_put(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void be64_put(uint8_t *p, uint64_t v) { be32_put(p, (uint32_t)(v >> 32)); be32_put(p + 4, (uint32_t)v); }
static inline uint32_t le32_get(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t le64_get(const uint8_t *p) { return (uint64_t)le32_get(p) | (uint64_t)le32_get(p + 4) << 32; }
static inline void le32_put(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void le64_put(uint8_t *p, uint64_t v) { le32_put(p, (uint32_t)v); le32_put(p + 4, (uint32_t)(v >> 32)); }

/* ----------------------------------------------------------------- strings */

/* Growable string buffer.  data is always NUL-terminated (or NULL if empty). */
struct strbuf {
	char *data;
	size_t len, cap;
};
int strbuf_append(struct strbuf *sb, const char *s, size_t n);
int strbuf_puts(struct strbuf *sb, const char *s);
int strbuf_printf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append s as a JSON string literal (quotes, escapes; bytes >= 0x80 pass
 * through, so valid UTF-8 stays valid). */
int strbuf_json_string(struct strbuf *sb, const char *s);
void strbuf_reset(struct strbuf *sb);
void strbuf_free(struct strbuf *sb);
/* Return data (caller owns it) and reset the buffer. */
char *strbuf_steal(struct strbuf *sb);

/* asprintf that aborts on OOM: Vela treats allocation failure of small
 * strings as fatal, like most daemons of its class. */
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t size);

bool str_ieq(const char *a, const char *b);
bool str_starts_with(const char *s, const char *prefix);
bool str_istarts_with(const char *s, const char *prefix);
/* Parse TRUE/FALSE/true/false/yes/no/1/0/on/off; -VELA_E_INVAL otherwise. */
int parse_bool(const char *s, bool *out);
/* Parse a decimal unsigned integer with no trailing garbage, <= max. */
int parse_u64(const char *s, uint64_t max, uint64_t *out);
/* Parse a size with optional k/m/g/t suffix (powers of 1024) into bytes. */
int parse_size(const char *s, uint64_t *out);

/* Base64 (RFC 4648) for binary data in JSON.  encode: caller frees. */
char *base64_encode(const void *data, size_t len);
int base64_decode(const char *s, void **out, size_t *out_len);

/* 64-bit FNV-1a, for stable ids derived from names. */
uint64_t hash_fnv1a64(const void *data, size_t len);

/* --------------------------------------------------------------- UUIDs, MAC */

/* Fill 16 random bytes (getrandom). */
int random_bytes(void *buf, size_t len);

/* ------------------------------------------------------------- files, fds */

int write_all(int fd, const void *buf, size_t len);
/* For sockets: like write_all but a vanished peer is an error (EPIPE ->
 * VELA_E_CONNRESET), never a SIGPIPE. */
int send_all(int fd, const void *buf, size_t len);
/* Read a whole file, at most max bytes (VELA_E_TOOBIG beyond).  *out is
 * NUL-terminated; *len excludes the NUL. */
int read_file(const char *path, size_t max, char **out, size_t *len);
/* Write a file atomically: temp file in the same folder, fsync, rename, fsync
 * of the folder.  Keeps the mode of an existing file. */
int write_file_atomic(const char *path, const void *data, size_t len);
int mkdir_p(const char *path, unsigned mode);
int fd_set_nonblock(int fd, bool on);
int fd_set_cloexec(int fd, bool on);
/* Directory part / last component of a path (caller frees). */
char *path_dirname(const char *path);
char *path_basename(const char *path);
/* Join dir and a relative path; an absolute rel is returned as is. */
char *path_join(const char *dir, const char *rel);

/* UNIX stream sockets. */
int unix_listen(const char *path, int backlog);
int unix_connect(const char *path);

/* -------------------------------------------------------------------- time */

int64_t time_mono_ms(void);
int64_t time_real_ms(void);
/* "2026-11-21T23:54:38.123Z" into buf (at least 32 bytes). */
void time_format_iso(int64_t real_ms, char *buf, size_t size);

/* ------------------------------------------------------------------- paths */

/* $VELA_HOME or /var/lib/vela.  Owned by the library. */
const char *vela_home(void);
/* Folder for runtime sockets and pid files: $VELA_HOME/run when VELA_HOME is
 * set (so several instances and tests can run side by side), else /run/vela. */
const char *vela_run_root(void);
/* Resolve "[datastore] rel/path": datastores are folders (or links to them)
 * under $VELA_HOME/datastores/<name>.  Other paths are resolved against base_dir
 * when relative.  Caller frees. */
int vela_resolve_path(const char *path, const char *base_dir, char **out);

/* -------------------------------------------------------------- event loop */

/*
 * A tiny single-threaded event loop in the spirit of Redis's ae.c: file
 * descriptors (epoll) and millisecond timers.  Callbacks may add and remove
 * handlers, including their own.
 */
struct vela_loop;
typedef void (*vela_fd_cb)(struct vela_loop *loop, int fd, uint32_t events, void *opaque);
typedef void (*vela_timer_cb)(struct vela_loop *loop, uint64_t id, void *opaque);

struct vela_loop *vela_loop_new(void);
void vela_loop_free(struct vela_loop *loop);
/* events are EPOLLIN/EPOLLOUT bits. */
int vela_loop_add_fd(struct vela_loop *loop, int fd, uint32_t events, vela_fd_cb cb, void *opaque);
int vela_loop_mod_fd(struct vela_loop *loop, int fd, uint32_t events);
void vela_loop_del_fd(struct vela_loop *loop, int fd);
/* One-shot timer after ms milliseconds; returns its id (> 0). */
uint64_t vela_loop_add_timer(struct vela_loop *loop, int64_t ms, vela_timer_cb cb, void *opaque);
void vela_loop_del_timer(struct vela_loop *loop, uint64_t id);
/* Run until vela_loop_stop(); returns 0 or a negative error. */
int vela_loop_run(struct vela_loop *loop);
void vela_loop_stop(struct vela_loop *loop);

#endif /* VELA_COMMON_H */
