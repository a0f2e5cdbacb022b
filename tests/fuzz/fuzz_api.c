/* libFuzzer target: velad's JSON request body decoder (what API clients send). */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct api_field f[] = {
		{ .name = "config", .type = 's' },
		{ .name = "name", .type = 's', .optional = true },
		{ .name = "count", .type = 'i', .optional = true },
		{ .name = "force", .type = 'b', .optional = true },
	};
	json_t *doc = NULL;
	if (api_decode_body((const char *)data, size, f, ARRAY_SIZE(f), &doc) == 0) {
		/* Success means: an object, the required member a string without
		 * a NUL inside, and every member it took of the declared type. */
		if (!doc || !f[0].present || !f[0].s || strlen(f[0].s) != json_string_length(json_object_get(doc, "config")))
			__builtin_trap();
		if (f[1].present && !f[1].s)
			__builtin_trap();
	} else if (doc) {
		__builtin_trap();   /* a refusal leaves nothing behind */
	}
	json_decref(doc);
	return 0;
}
