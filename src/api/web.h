/* web.h - (private to src/api) the web UI's static files. */
#ifndef VELA_API_WEB_H
#define VELA_API_WEB_H

#include <microhttpd.h>

/*
 * Answer GET url with a file of the UI's folder root ("/" is index.html),
 * or 404.  Names with "..", ".", empty parts, hidden parts or control
 * characters, and links that lead out of root, are refused.
 */
enum MHD_Result web_serve(struct MHD_Connection *c, const char *root, const char *url);

#endif /* VELA_API_WEB_H */
