/* libFuzzer target: the .vmx parser, model builder and writer.
 * Invariants: no crash, no leak; a file that parses serializes back to the
 * same bytes; setting a key and re-parsing gives that value back. */
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "vmx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vmx_file *f = NULL;
	if (vmx_file_parse("fuzz.vmx", (const char *)data, size, &f) < 0)
		return 0;
	size_t len;
	char *out = vmx_file_serialize(f, &len);
	if (len != size || memcmp(out, data, size) != 0)
		__builtin_trap();
	free(out);

	struct vmx_model *m = NULL;
	struct vmx_model_opts o = { .check_files = false };
	struct strbuf diag = { 0 };
	if (vmx_model_build(f, "/fuzz/vm/fuzz.vmx", &o, &diag, &m) == 0)
		vmx_model_free(m);
	strbuf_free(&diag);

	if (vmx_set(f, "annotation", "a \"quoted\" | value\nnext") == 0) {
		out = vmx_file_serialize(f, &len);
		struct vmx_file *g = NULL;
		if (vmx_file_parse("again.vmx", out, len, &g) < 0) {
			fprintf(stderr, "re-parse failed: %s\n", vela_errmsg());
			__builtin_trap();
		}
		if (strcmp(vmx_get(g, "annotation"), "a \"quoted\" | value\nnext") != 0)
			__builtin_trap();
		vmx_file_free(g);
		free(out);
	}
	vmx_file_free(f);
	return 0;
}
