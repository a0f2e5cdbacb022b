/* main.c - velad: the host daemon (inventory, power, events, API). */
#include "common.h"
#include "api.h"
#include "host.h"

#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: velad [OPTIONS]\n"
		"The Vela host daemon: inventory, power control, events and the API.\n"
		"Stopping or killing velad never stops running VMs.\n\n"
		"  --foreground      stay attached to the terminal, log to stderr\n"
		"  --home DIR        database, datastores, sockets (default $VELA_HOME or /var/lib/vela)\n"
		"  --socket PATH     API socket (default <run>/velad.sock)\n"
		"  -v, --verbose     debug logging\n"
		"  -h, --help        this text\n"
		"  -V, --version     print the version\n");
}

/* Detach: the parent returns once the child runs on its own session. */
static int daemonize(void)
{
	pid_t pid = fork();
	if (pid < 0)
		return vela_error_errno(errno, "fork");
	if (pid > 0)
		_exit(0);
	setsid();
	int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
		close(fd);
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "foreground", no_argument, NULL, 'f' },
		{ "home", required_argument, NULL, 'H' },
		{ "socket", required_argument, NULL, 's' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	bool foreground = false;
	struct api_opts ao = { 0 };
	int c;
	while ((c = getopt_long(argc, argv, "vhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'f': foreground = true; break;
		case 'H': setenv("VELA_HOME", optarg, 1); break;
		case 's': ao.unix_path = optarg; break;
		case 'v': vela_log_set_level(VELA_LOG_DEBUG); break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("velad %s\n", VELA_VERSION); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	/* Supervisors we start must not die with us: they double-fork
	 * (vmxsup_spawn), and SIGCHLD of the short-lived middle child is reaped
	 * there. */
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);   /* every thread inherits the mask; main waits */

	CLEANUP_FREE char *log = path_join(vela_home(), "velad.log");
	if (mkdir_p(vela_home(), 0755) < 0) {
		fprintf(stderr, "velad: %s\n", vela_errmsg());
		return 1;
	}
	if (!foreground) {
		if (daemonize() < 0) {
			fprintf(stderr, "velad: %s\n", vela_errmsg());
			return 1;
		}
		vela_log_set_stderr(false);
	}
	if (vela_log_open_file(log, 5, 10u << 20) < 0)
		fprintf(stderr, "velad: log %s: %s\n", log, vela_errmsg());

	struct host_opts ho = { .vmx_binary = getenv("VELA_VMX_BINARY") };
	struct host *h = NULL;
	struct api *a = NULL;
	int r = host_open(&ho, &h);
	if (r == 0)
		r = api_start(h, &ao, &a);
	if (r < 0) {
		vela_log(VELA_LOG_ERROR, "velad: %s", vela_errmsg());
		fprintf(stderr, "velad: %s\n", vela_errmsg());
		host_close(h);
		return 1;
	}
	CLEANUP_FREE char *pidfile = path_join(vela_run_root(), "velad.pid");
	CLEANUP_FREE char *pid = xasprintf("%d\n", (int)getpid());
	write_file_atomic(pidfile, pid, strlen(pid));
	vela_log(VELA_LOG_INFO, "velad %s ready (home %s)", VELA_VERSION, vela_home());

	int sig = 0;
	sigwait(&stop, &sig);
	vela_log(VELA_LOG_INFO, "velad: signal %d, stopping (VMs keep running)", sig);
	api_stop(a);
	host_close(h);
	unlink(pidfile);
	vela_log_close_file();
	return 0;
}
