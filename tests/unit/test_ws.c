/* Unit tests: src/ws against the examples of RFC 6455. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <string.h>

#include "common.h"
#include "ws.h"

static void accept_key_of_the_rfc(void **s)
{
	(void)s;
	char out[WS_ACCEPT_LEN];
	/* RFC 6455 section 1.3. */
	assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out), 0);
	assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
	assert_int_equal(ws_accept_key("short", out), -VELA_E_PROTOCOL);
	assert_int_equal(ws_accept_key(NULL, out), -VELA_E_PROTOCOL);
	assert_int_equal(ws_accept_key("dGhlIHNhbXBsZSBub25j!!==", out), -VELA_E_PROTOCOL);
}

static void frames_of_the_rfc(void **s)
{
	(void)s;
	/* RFC 6455 section 5.7: a masked "Hello", whole and in pieces. */
	uint8_t hello[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58 };
	struct ws_frame f;
	for (size_t n = 0; n < sizeof hello; n++)
		assert_int_equal(ws_parse(hello, n, 1024, &f), 0);
	assert_int_equal(ws_parse(hello, sizeof hello, 1024, &f), (ssize_t)sizeof hello);
	assert_true(f.fin);
	assert_int_equal(f.opcode, WS_TEXT);
	assert_int_equal(f.len, 5);
	assert_memory_equal(f.payload, "Hello", 5);

	/* What a client must not send. */
	uint8_t unmasked[] = { 0x81, 0x05, 'H', 'e', 'l', 'l', 'o' };
	assert_int_equal(ws_parse(unmasked, sizeof unmasked, 1024, &f), -VELA_E_PROTOCOL);
	uint8_t reserved[] = { 0xc1, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_parse(reserved, sizeof reserved, 1024, &f), -VELA_E_PROTOCOL);
	uint8_t opcode3[] = { 0x83, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_parse(opcode3, sizeof opcode3, 1024, &f), -VELA_E_PROTOCOL);
	uint8_t long_ping[] = { 0x89, 0xfe, 0x00, 0x7e };
	assert_int_equal(ws_parse(long_ping, sizeof long_ping, 1024, &f), -VELA_E_PROTOCOL);
	uint8_t fragmented_close[] = { 0x08, 0x80, 0, 0, 0, 0 };
	assert_int_equal(ws_parse(fragmented_close, sizeof fragmented_close, 1024, &f), -VELA_E_PROTOCOL);
	uint8_t huge[] = { 0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0 };
	assert_int_equal(ws_parse(huge, sizeof huge, 1024, &f), -VELA_E_PROTOCOL);

	/* Server headers: the three length forms. */
	uint8_t h[WS_MAX_HEADER];
	assert_int_equal(ws_header(h, WS_BINARY, 5), 2);
	assert_int_equal(h[0], 0x82);
	assert_int_equal(h[1], 5);
	assert_int_equal(ws_header(h, WS_BINARY, 256), 4);
	assert_int_equal(h[1], 126);
	assert_int_equal(h[2] << 8 | h[3], 256);
	assert_int_equal(ws_header(h, WS_BINARY, 65536), 10);
	assert_int_equal(h[1], 127);
	assert_int_equal(h[7], 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(accept_key_of_the_rfc),
		cmocka_unit_test(frames_of_the_rfc),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
