/*
 * libFuzzer target: a VM's reconfiguration (PATCH /vms/ID bodies) against a
 * real host database and .vmx: whatever the body, the .vmx stays a valid
 * configuration, and a refused change leaves it byte for byte as it was.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "host.h"
#include "vmx.h"

static struct host *host;
static int64_t vm_id;
static char *vmx_path;

static char home[] = "/tmp/vela-fuzz-reconf-XXXXXX";

static void remove_home(void)
{
	host_close(host);
	char *cmd = xasprintf("rm -rf '%s'", home);
	if (system(cmd) != 0)
		fprintf(stderr, "fuzz-reconfigure: could not remove %s\n", home);
	free(cmd);
}

static void setup(void)
{
	if (!mkdtemp(home))
		abort();
	vela_log_set_level(VELA_LOG_ERROR);
	struct host_opts o = { .home = home, .refresh_ms = -1 };
	json_t *vm = NULL;
	struct host_vm_spec sp = { .name = "target", .memsize_mb = 64, .vcpus = 1, .nic = true };
	if (host_open(&o, &host) < 0 || host_vm_create(host, "fuzz", &sp, NULL, &vm) < 0)
		abort();
	vm_id = json_integer_value(json_object_get(vm, "id"));
	vmx_path = xstrdup(json_string_value(json_object_get(vm, "config")));
	json_decref(vm);
	atexit(remove_home);
}

static char *file_text(size_t *len)
{
	char *text = NULL;
	if (read_file(vmx_path, 1 << 20, &text, len) < 0)
		abort();
	return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!host)
		setup();
	json_t *changes = json_loadb((const char *)data, size, 0, NULL);
	/* New disks are files: the unit tests cover them; here they would only
	 * fill the disk. */
	if (!changes || json_object_get(changes, "add_disks")) {
		json_decref(changes);
		return 0;
	}
	size_t before_len, after_len;
	char *before = file_text(&before_len);
	json_t *out = NULL;
	int r = host_vm_reconfigure(host, "fuzz", vm_id, changes, &out);
	char *after = file_text(&after_len);
	if (r < 0 && (before_len != after_len || memcmp(before, after, before_len) != 0))
		__builtin_trap();   /* a refused change changed the file */
	struct vmx_file *f = NULL;
	struct vmx_model *m = NULL;
	struct vmx_model_opts mo = { .check_files = false };
	if (vmx_file_load(vmx_path, &f) < 0 || vmx_model_build(f, vmx_path, &mo, NULL, &m) < 0)
		__builtin_trap();   /* the .vmx no longer makes a VM */
	vmx_model_free(m);
	vmx_file_free(f);
	free(before);
	free(after);
	json_decref(out);
	json_decref(changes);
	return 0;
}
