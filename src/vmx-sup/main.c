/* main.c - vela-vmx: the per-VM supervisor.  Normally started by `vela vm start`. */
#include "common.h"
#include "vmx-sup.h"

#include <getopt.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: vela-vmx [OPTIONS] FILE.vmx\n"
		"Run one virtual machine: start QEMU, supervise it, serve its control and\n"
		"console sockets, and exit when the VM powers off.\n\n"
		"  --daemon          detach from the terminal (logs go to the VM's vela.log)\n"
		"  --ready-fd N      write one JSON status line to fd N once the VM is on,\n"
		"                    waiting for an answer, or failed\n"
		"  --qemu PATH       QEMU binary (default qemu-system-x86_64)\n"
		"  --accel auto|kvm|tcg  host default for VMs with engine.accel = auto\n"
		"                    (also $VELA_ACCEL)\n"
		"  -v, --verbose     debug logging\n"
		"  -h, --help        this text\n"
		"  -V, --version     print the version\n");
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "daemon", no_argument, NULL, 'd' },
		{ "ready-fd", required_argument, NULL, 'r' },
		{ "qemu", required_argument, NULL, 'q' },
		{ "accel", required_argument, NULL, 'a' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct vmxsup_opts o = { .ready_fd = -1, .accel_override = getenv("VELA_ACCEL") };
	int c;
	while ((c = getopt_long(argc, argv, "vhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'd': o.daemonize = true; break;
		case 'r': {
			uint64_t v;
			if (parse_u64(optarg, 1 << 20, &v) < 0) {
				fprintf(stderr, "vela-vmx: --ready-fd: %s\n", vela_errmsg());
				return 2;
			}
			o.ready_fd = (int)v;
			break;
		}
		case 'q': o.qemu_binary = optarg; break;
		case 'a': o.accel_override = optarg; break;
		case 'v': vela_log_set_level(VELA_LOG_DEBUG); break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("vela-vmx %s\n", VELA_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	o.config_path = argv[optind];
	return vmxsup_main(&o);
}
