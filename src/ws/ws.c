/* ws.c - WebSocket handshake key and frames (RFC 6455, server side). */
#include "common.h"
#include "ws.h"

#include <gnutls/crypto.h>
#include <string.h>

/* Fixed by RFC 6455 section 1.3. */
static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

int ws_accept_key(const char *client_key, char out[WS_ACCEPT_LEN])
{
	void *raw = NULL;
	size_t raw_len = 0;
	if (!client_key || strlen(client_key) != 24 || base64_decode(client_key, &raw, &raw_len) < 0 || raw_len != 16) {
		free(raw);
		return vela_error(VELA_E_PROTOCOL, "Sec-WebSocket-Key is not 16 bytes in base64");
	}
	free(raw);
	char joined[24 + sizeof ws_guid];
	memcpy(joined, client_key, 24);
	memcpy(joined + 24, ws_guid, sizeof ws_guid);
	uint8_t digest[20];
	if (gnutls_hash_fast(GNUTLS_DIG_SHA1, joined, 24 + sizeof ws_guid - 1, digest) < 0)
		return vela_error(VELA_E_SYSTEM, "SHA-1 is not available");
	char *b64 = base64_encode(digest, sizeof digest);
	snprintf(out, WS_ACCEPT_LEN, "%s", b64);
	free(b64);
	return 0;
}

ssize_t ws_parse(uint8_t *buf, size_t n, size_t max_payload, struct ws_frame *f)
{
	if (n < 2)
		return 0;
	uint8_t b0 = buf[0], b1 = buf[1];
	if (b0 & 0x70)
		return vela_error(VELA_E_PROTOCOL, "WebSocket: reserved bits set (no extension was agreed)");
	unsigned op = b0 & 0x0f;
	bool control = op & 0x8;
	if (op != WS_CONTINUATION && op != WS_TEXT && op != WS_BINARY && op != WS_CLOSE && op != WS_PING && op != WS_PONG)
		return vela_error(VELA_E_PROTOCOL, "WebSocket: unknown opcode %u", op);
	if (!(b1 & 0x80))
		return vela_error(VELA_E_PROTOCOL, "WebSocket: a client frame is not masked");
	uint64_t len = b1 & 0x7f;
	size_t at = 2;
	if (len == 126) {
		if (n < 4)
			return 0;
		len = (uint64_t)buf[2] << 8 | buf[3];
		at = 4;
	} else if (len == 127) {
		if (n < 10)
			return 0;
		len = 0;
		for (int i = 0; i < 8; i++)
			len = len << 8 | buf[2 + i];
		at = 10;
		if (len >> 63)
			return vela_error(VELA_E_PROTOCOL, "WebSocket: a length with its top bit set");
	}
	if (control && (len > 125 || !(b0 & 0x80)))
		return vela_error(VELA_E_PROTOCOL, "WebSocket: a control frame must be final and at most 125 bytes");
	if (len > max_payload)
		return vela_error(VELA_E_PROTOCOL, "WebSocket: a frame of %llu bytes (at most %zu)", (unsigned long long)len,
				  max_payload);
	if (n - at < 4 || n - at - 4 < len)
		return 0;
	const uint8_t *mask = buf + at;
	uint8_t *p = buf + at + 4;
	for (size_t i = 0; i < len; i++)
		p[i] ^= mask[i & 3];
	f->fin = b0 & 0x80;
	f->opcode = (enum ws_opcode)op;
	f->payload = p;
	f->len = (size_t)len;
	return (ssize_t)(at + 4 + len);
}

size_t ws_header(uint8_t hdr[WS_MAX_HEADER], enum ws_opcode op, uint64_t len)
{
	hdr[0] = 0x80 | (uint8_t)op;
	if (len < 126) {
		hdr[1] = (uint8_t)len;
		return 2;
	}
	if (len <= 0xffff) {
		hdr[1] = 126;
		hdr[2] = (uint8_t)(len >> 8);
		hdr[3] = (uint8_t)len;
		return 4;
	}
	hdr[1] = 127;
	for (int i = 0; i < 8; i++)
		hdr[2 + i] = (uint8_t)(len >> (56 - 8 * i));
	return 10;
}
