/*
 * ws.h - the server side of the WebSocket protocol (RFC 6455): the
 * handshake's accept key, and frames.  Transport-free: callers own the
 * sockets (velad bridges a browser's WebSocket to a VM's console socket).
 */
#ifndef VELA_WS_H
#define VELA_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

enum ws_opcode {
	WS_CONTINUATION = 0x0,
	WS_TEXT = 0x1,
	WS_BINARY = 0x2,
	WS_CLOSE = 0x8,
	WS_PING = 0x9,
	WS_PONG = 0xa,
};

/* Sec-WebSocket-Accept for a client's Sec-WebSocket-Key (base64 of 16
 * bytes): base64(SHA-1(key + the protocol's GUID)), 28 characters and a NUL.
 * VELA_E_PROTOCOL for a key that is not 16 bytes in base64. */
#define WS_ACCEPT_LEN 29
int ws_accept_key(const char *client_key, char out[WS_ACCEPT_LEN]);

struct ws_frame {
	bool fin;
	enum ws_opcode opcode;
	uint8_t *payload;        /* inside the parsed buffer, unmasked in place */
	size_t len;
};

/*
 * Parse one client frame at the start of buf[0..n).  Returns the bytes it
 * takes (then *f describes it, its payload unmasked in place), 0 when more
 * bytes are needed, or -VELA_E_PROTOCOL for what a client must not send:
 * an unmasked frame, reserved bits, an unknown opcode, a control frame that
 * is fragmented or longer than 125 bytes, a payload above max_payload.
 */
ssize_t ws_parse(uint8_t *buf, size_t n, size_t max_payload, struct ws_frame *f);

/* The header of a server frame (unmasked, final) carrying len bytes: up to
 * WS_MAX_HEADER bytes written to hdr; returns how many. */
#define WS_MAX_HEADER 10
size_t ws_header(uint8_t hdr[WS_MAX_HEADER], enum ws_opcode op, uint64_t len);

#endif /* VELA_WS_H */
