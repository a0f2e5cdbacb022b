/* file.c - files, paths, sockets, time. */
#include "common.h"

#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>

int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return vela_error_errno(errno, "write");
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int send_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == ENOTSOCK)
				return write_all(fd, p, len);
			return vela_error_errno(errno, "send");
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int read_file(const char *path, size_t max, char **out, size_t *len)
{
	CLEANUP_CLOSE int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct strbuf sb = { 0 };
	char buf[8192];

	if (fd < 0)
		return vela_error_errno(errno, "open %s", path);
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			strbuf_free(&sb);
			return vela_error_errno(e, "read %s", path);
		}
		if (n == 0)
			break;
		if (sb.len + (size_t)n > max) {
			strbuf_free(&sb);
			return vela_error(VELA_E_TOOBIG, "read %s: file is larger than %zu bytes", path, max);
		}
		strbuf_append(&sb, buf, (size_t)n);
	}
	if (len)
		*len = sb.len;
	*out = strbuf_steal(&sb);
	return 0;
}

static int fsync_dir(const char *dir)
{
	CLEANUP_CLOSE int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		return vela_error_errno(errno, "fsync %s", dir);
	return 0;
}

int write_file_atomic(const char *path, const void *data, size_t len)
{
	CLEANUP_FREE char *dir = path_dirname(path);
	CLEANUP_FREE char *base = path_basename(path);
	CLEANUP_FREE char *tmp = xasprintf("%s/.%s.tmp%ld", dir, base, (long)getpid());
	struct stat st;
	mode_t mode = 0644;
	int r;

	if (stat(path, &st) == 0)
		mode = st.st_mode & 07777;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
	if (fd < 0)
		return vela_error_errno(errno, "create %s", tmp);
	r = write_all(fd, data, len);
	if (r == 0 && fsync(fd) < 0)
		r = vela_error_errno(errno, "fsync %s", tmp);
	if (close(fd) < 0 && r == 0)
		r = vela_error_errno(errno, "close %s", tmp);
	if (r == 0 && rename(tmp, path) < 0)
		r = vela_error_errno(errno, "rename %s to %s", tmp, path);
	if (r < 0) {
		unlink(tmp);
		return vela_error_context(r, "write %s", path);
	}
	return fsync_dir(dir);
}

int mkdir_p(const char *path, unsigned mode)
{
	CLEANUP_FREE char *p = xstrdup(path);
	for (char *s = p + 1; ; s++) {
		if (*s == '/' || *s == '\0') {
			char c = *s;
			*s = '\0';
			if (mkdir(p, mode) < 0 && errno != EEXIST)
				return vela_error_errno(errno, "mkdir %s", p);
			*s = c;
			if (!c)
				break;
		}
	}
	return 0;
}

int fd_set_nonblock(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) < 0)
		return vela_error_errno(errno, "fcntl O_NONBLOCK");
	return 0;
}

int fd_set_cloexec(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFD);
	if (fl < 0 || fcntl(fd, F_SETFD, on ? (fl | FD_CLOEXEC) : (fl & ~FD_CLOEXEC)) < 0)
		return vela_error_errno(errno, "fcntl FD_CLOEXEC");
	return 0;
}

char *path_dirname(const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		return xstrdup(".");
	if (slash == path)
		return xstrdup("/");
	return xstrndup(path, (size_t)(slash - path));
}

char *path_basename(const char *path)
{
	const char *slash = strrchr(path, '/');
	return xstrdup(slash ? slash + 1 : path);
}

char *path_join(const char *dir, const char *rel)
{
	if (rel[0] == '/')
		return xstrdup(rel);
	size_t n = strlen(dir);
	if (n > 0 && dir[n - 1] == '/')
		return xasprintf("%s%s", dir, rel);
	return xasprintf("%s/%s", dir, rel);
}

static int fill_sockaddr(const char *path, struct sockaddr_un *sa)
{
	memset(sa, 0, sizeof *sa);
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof sa->sun_path)
		return vela_error(VELA_E_TOOBIG, "socket path %s is longer than %zu bytes", path, sizeof sa->sun_path - 1);
	strcpy(sa->sun_path, path);
	return 0;
}

int unix_listen(const char *path, int backlog)
{
	struct sockaddr_un sa;
	int r = fill_sockaddr(path, &sa);
	if (r < 0)
		return r;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vela_error_errno(errno, "socket");
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, backlog) < 0) {
		int e = errno;
		close(fd);
		return vela_error_errno(e, "listen on %s", path);
	}
	return fd;
}

int unix_connect(const char *path)
{
	struct sockaddr_un sa;
	int r = fill_sockaddr(path, &sa);
	if (r < 0)
		return r;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vela_error_errno(errno, "socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		int e = errno;
		close(fd);
		return vela_error_errno(e, "connect to %s", path);
	}
	return fd;
}

int64_t time_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_real_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void time_format_iso(int64_t real_ms, char *buf, size_t size)
{
	time_t t = (time_t)(real_ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	char tmp[32];
	strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, size, "%s.%03dZ", tmp, (int)(real_ms % 1000));
}

const char *vela_home(void)
{
	const char *h = getenv("VELA_HOME");
	return (h && *h) ? h : "/var/lib/vela";
}

const char *vela_run_root(void)
{
	static _Thread_local char buf[4096];
	const char *h = getenv("VELA_HOME");
	if (h && *h) {
		snprintf(buf, sizeof buf, "%s/run", h);
		return buf;
	}
	return "/run/vela";
}

int vela_resolve_path(const char *path, const char *base_dir, char **out)
{
	if (path[0] == '[') {
		const char *end = strchr(path, ']');
		if (!end)
			return vela_error(VELA_E_INVAL, "path \"%s\": missing ']' after datastore name", path);
		CLEANUP_FREE char *ds = xstrndup(path + 1, (size_t)(end - path - 1));
		if (!*ds || strchr(ds, '/') || strcmp(ds, ".") == 0 || strcmp(ds, "..") == 0)
			return vela_error(VELA_E_BADNAME, "path \"%s\": bad datastore name \"%s\"", path, ds);
		const char *rel = end + 1;
		while (*rel == ' ')
			rel++;
		while (*rel == '/')
			rel++;
		*out = xasprintf("%s/datastores/%s/%s", vela_home(), ds, rel);
		return 0;
	}
	*out = path_join(base_dir, path);
	return 0;
}
