/* base64.c - RFC 4648 base64, for binary data inside JSON messages. */
#include "common.h"

#include <string.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *base64_encode(const void *data, size_t len)
{
	const unsigned char *p = data;
	char *out = xcalloc(1, (len + 2) / 3 * 4 + 1);
	size_t o = 0;
	for (size_t i = 0; i < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < len)
			v |= p[i + 2];
		out[o++] = alphabet[(v >> 18) & 63];
		out[o++] = alphabet[(v >> 12) & 63];
		out[o++] = i + 1 < len ? alphabet[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? alphabet[v & 63] : '=';
	}
	return out;
}

int base64_decode(const char *s, void **out, size_t *out_len)
{
	size_t n = strlen(s);
	if (n % 4)
		return vela_error(VELA_E_INVAL, "base64: length %zu is not a multiple of 4", n);
	unsigned char *buf = xcalloc(1, n / 4 * 3 + 1);
	size_t o = 0;
	for (size_t i = 0; i < n; i += 4) {
		uint32_t v = 0;
		int pad = 0;
		for (int k = 0; k < 4; k++) {
			char c = s[i + k];
			const char *pos = c ? strchr(alphabet, c) : NULL;
			if (c == '=' && i + 4 == n && k >= 2) {
				pad++;
				v <<= 6;
				continue;
			}
			if (!pos || pad) {
				free(buf);
				return vela_error(VELA_E_INVAL, "base64: bad character at offset %zu", i + (size_t)k);
			}
			v = (v << 6) | (uint32_t)(pos - alphabet);
		}
		buf[o++] = (unsigned char)(v >> 16);
		if (pad < 2)
			buf[o++] = (unsigned char)(v >> 8);
		if (pad < 1)
			buf[o++] = (unsigned char)v;
	}
	*out = buf;
	*out_len = o;
	return 0;
}
