/*
 * web.c - the web UI's static files (built from web/ by npm at build time,
 * so nothing comes from elsewhere at run time).  The pages talk to the
 * same API as everybody else; the headers keep other sites out of them.
 */
#include "common.h"
#include "web.h"

#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
	const char *ext, *type;
} types[] = {
	{ ".html", "text/html; charset=utf-8" }, { ".js", "text/javascript; charset=utf-8" },
	{ ".css", "text/css; charset=utf-8" }, { ".svg", "image/svg+xml" }, { ".png", "image/png" },
	{ ".ico", "image/x-icon" }, { ".json", "application/json" }, { ".map", "application/json" },
	{ ".woff2", "font/woff2" }, { ".txt", "text/plain; charset=utf-8" },
};

static bool rel_name_ok(const char *rel)
{
	if (!*rel || strlen(rel) > 512)
		return false;
	for (const char *p = rel; *p;) {
		size_t n = strcspn(p, "/");
		if (n == 0 || p[0] == '.')
			return false;   /* empty, ".", ".." and hidden parts */
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f || p[i] == '\\')
				return false;
		p += n;
		if (*p == '/' && !*++p)
			return false;
	}
	return true;
}

static enum MHD_Result not_found(struct MHD_Connection *c)
{
	static const char body[] = "not found\n";
	struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof body - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_NOT_FOUND, resp);
	MHD_destroy_response(resp);
	return mr;
}

enum MHD_Result web_serve(struct MHD_Connection *c, const char *root, const char *url)
{
	const char *rel = strcmp(url, "/") == 0 ? "index.html" : url + 1;
	if (url[0] != '/' || !rel_name_ok(rel))
		return not_found(c);
	const char *ext = strrchr(rel, '.');
	const char *type = NULL;
	for (size_t i = 0; ext && i < ARRAY_SIZE(types); i++)
		if (strcmp(ext, types[i].ext) == 0)
			type = types[i].type;
	if (!type)
		return not_found(c);
	CLEANUP_FREE char *path = path_join(root, rel);
	CLEANUP_FREE char *real = realpath(path, NULL);
	CLEANUP_FREE char *real_root = realpath(root, NULL);
	size_t n = real_root ? strlen(real_root) : 0;
	if (!real || !real_root || strncmp(real, real_root, n) != 0 || real[n] != '/')
		return not_found(c);
	int fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		if (fd >= 0)
			close(fd);
		return not_found(c);
	}
	struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	/* The UI's own scripts and styles only, its own API and WebSockets,
	 * and no framing by other sites (clickjacking). */
	MHD_add_response_header(resp, "Content-Security-Policy",
				"default-src 'self'; connect-src 'self'; img-src 'self' data:; "
				"style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'");
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return mr;
}
