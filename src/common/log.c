/* log.c - leveled logging to stderr and to a rotated log file. */
#include "common.h"

#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>

/* The logging sink is a process-wide singleton owned by this file. */
static struct {
	pthread_mutex_t lock;
	enum vela_log_level level;
	bool to_stderr;
	FILE *file;
	char *path;
	unsigned keep;
	size_t max_bytes;
	size_t written;
} logger = { PTHREAD_MUTEX_INITIALIZER, VELA_LOG_INFO, true, NULL, NULL, 3, 0, 0 };

static const char *const level_names[] = { "error", "warning", "info", "debug" };

void vela_log_set_level(enum vela_log_level level)
{
	logger.level = level;
}

void vela_log_set_stderr(bool on)
{
	logger.to_stderr = on;
}

/* path -> path-1 -> ... -> path-keep (dropped).  "vela.log" becomes
 * "vela-1.log": the number goes before the extension, as admins expect. */
static char *rotated_name(const char *path, unsigned n)
{
	const char *dot = strrchr(path, '.');
	const char *slash = strrchr(path, '/');
	if (dot && (!slash || dot > slash))
		return xasprintf("%.*s-%u%s", (int)(dot - path), path, n, dot);
	return xasprintf("%s-%u", path, n);
}

static void rotate(const char *path, unsigned keep)
{
	for (unsigned i = keep; i >= 1; i--) {
		CLEANUP_FREE char *to = rotated_name(path, i);
		CLEANUP_FREE char *from = i == 1 ? xstrdup(path) : rotated_name(path, i - 1);
		rename(from, to);
	}
}

static int open_locked(void)
{
	int fd = open(logger.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return vela_error_errno(errno, "open log %s", logger.path);
	logger.file = fdopen(fd, "a");
	if (!logger.file) {
		close(fd);
		return vela_error_errno(errno, "fdopen log %s", logger.path);
	}
	setvbuf(logger.file, NULL, _IOLBF, 0);
	logger.written = 0;
	return 0;
}

int vela_log_open_file(const char *path, unsigned keep, size_t max_bytes)
{
	pthread_mutex_lock(&logger.lock);
	if (logger.file)
		fclose(logger.file);
	free(logger.path);
	logger.file = NULL;
	logger.path = xstrdup(path);
	logger.keep = keep;
	logger.max_bytes = max_bytes;
	struct stat st;
	if (keep > 0 && stat(path, &st) == 0 && st.st_size > 0)
		rotate(path, keep);
	int r = open_locked();
	pthread_mutex_unlock(&logger.lock);
	return r;
}

void vela_log_close_file(void)
{
	pthread_mutex_lock(&logger.lock);
	if (logger.file)
		fclose(logger.file);
	logger.file = NULL;
	free(logger.path);
	logger.path = NULL;
	pthread_mutex_unlock(&logger.lock);
}

void vela_log(enum vela_log_level level, const char *fmt, ...)
{
	char ts[40], msg[4096];
	va_list ap;

	if (level > logger.level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	time_format_iso(time_real_ms(), ts, sizeof ts);

	pthread_mutex_lock(&logger.lock);
	if (logger.to_stderr)
		fprintf(stderr, "%s %s: %s\n", ts, level_names[level], msg);
	if (logger.file) {
		int n = fprintf(logger.file, "%s| %s| %s\n", ts, level_names[level], msg);
		if (n > 0)
			logger.written += (size_t)n;
		if (logger.max_bytes && logger.written > logger.max_bytes) {
			fclose(logger.file);
			logger.file = NULL;
			rotate(logger.path, logger.keep);
			open_locked();
		}
	}
	pthread_mutex_unlock(&logger.lock);
}
