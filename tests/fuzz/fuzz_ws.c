/* libFuzzer target: WebSocket client frames as velad's console bridge parses
 * them (what a browser, or anybody with a session, sends). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size ? size : 1);
	memcpy(buf, data, size);
	size_t at = 0;
	/* Frames one after another, as the bridge takes them from its buffer. */
	while (at < size) {
		struct ws_frame f;
		ssize_t n = ws_parse(buf + at, size - at, 4096, &f);
		if (n <= 0)
			break;
		if ((size_t)n > size - at || f.len > 4096 || f.payload < buf + at || f.payload + f.len > buf + at + (size_t)n)
			__builtin_trap();   /* a frame is inside what it takes */
		if ((f.opcode & 0x8) && (f.len > 125 || !f.fin))
			__builtin_trap();
		at += (size_t)n;
	}
	uint8_t hdr[WS_MAX_HEADER];
	if (ws_header(hdr, WS_BINARY, size) > WS_MAX_HEADER)
		__builtin_trap();
	free(buf);
	return 0;
}
