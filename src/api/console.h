/*
 * console.h - (private to src/api) browser consoles: a WebSocket bridged to
 * a VM's console socket (the serial console's byte stream, or QEMU's VNC).
 */
#ifndef VELA_API_CONSOLE_H
#define VELA_API_CONSOLE_H

#include <microhttpd.h>

/* The bridges that are open, so that velad's stop can end them. */
struct console_bridges;
struct console_bridges *console_bridges_new(void);
/* End every bridge (their clients get a close frame) and wait for them. */
void console_bridges_free(struct console_bridges *b);

/*
 * Answer a WebSocket handshake on c (101 with accept, and protocol when the
 * client offered one) and bridge the connection to target_fd, which is
 * taken (closed on every path).
 */
enum MHD_Result console_upgrade(struct console_bridges *b, struct MHD_Connection *c, int target_fd, const char *accept,
				const char *protocol);

#endif /* VELA_API_CONSOLE_H */
