/* main.c - velad: the host daemon (inventory, power, events, API). */
#include "common.h"
#include "api.h"
#include "host.h"
#include "vela-config.h"

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
		"Stopping or killing velad never stops running VMs (unless --autostop-on-exit).\n\n"
		"  --foreground      stay attached to the terminal, log to stderr\n"
		"  --home DIR        database, datastores, sockets (default $VELA_HOME or /var/lib/vela)\n"
		"  --socket PATH     API socket (default <run>/velad.sock)\n"
		"  --https-port N    HTTPS API port (default 8333; 0 = none)\n"
		"  --http-port N     port that redirects to HTTPS (default 8222; 0 = none)\n"
		"  --listen ADDR     address of both ports (default every address)\n"
		"  --config FILE     settings (default <home>/velad.conf): https_port, http_port,\n"
		"                    listen, session_idle_minutes, low_space_percent (a datastore\n"
		"                    with less free space is reported; default 10), one\n"
		"                    \"key = value\" a line; autostop_on_exit (yes|no);\n"
		"                    stats_interval_seconds (default 20), stats_keep_minutes (60)\n"
		"  --web-root DIR    the web UI's files, served over HTTPS (default " VELA_WEB_DIR "\n"
		"                    when it exists; config key web_root)\n"
		"  --autostop-on-exit  at SIGTERM, stop the VMs as their autostop settings say\n"
		"                    before exiting (default: they keep running)\n"
		"  -v, --verbose     debug logging\n"
		"  -h, --help        this text\n"
		"  -V, --version     print the version\n");
}

struct settings {
	uint64_t https_port, http_port, idle_minutes, low_space_percent, stats_interval_s, stats_keep_min;
	bool autostop_on_exit;
	char *listen, *web_root;
};

/* <home>/velad.conf: "key = value" lines, '#' comments.  A missing file is
 * fine when it was not named explicitly. */
static int read_config(const char *path, bool must_exist, struct settings *st)
{
	CLEANUP_FREE char *text = NULL;
	size_t len;
	int r = read_file(path, 1 << 20, &text, &len);
	if (r < 0)
		return must_exist || r != -VELA_E_NOTFOUND ? r : 0;
	unsigned lineno = 0;
	for (char *line = text, *next; line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = '\0';
		char key[64], value[256];
		if (sscanf(line, " %63[a-z_] = %255s", key, value) != 2) {
			if (strspn(line, " \t\r") == strlen(line))
				continue;
			return vela_error(VELA_E_SYNTAX, "%s:%u: expected \"key = value\"", path, lineno);
		}
		uint64_t *num = strcmp(key, "https_port") == 0 ? &st->https_port :
				strcmp(key, "http_port") == 0 ? &st->http_port :
				strcmp(key, "session_idle_minutes") == 0 ? &st->idle_minutes :
				strcmp(key, "low_space_percent") == 0 ? &st->low_space_percent :
				strcmp(key, "stats_interval_seconds") == 0 ? &st->stats_interval_s :
				strcmp(key, "stats_keep_minutes") == 0 ? &st->stats_keep_min : NULL;
		uint64_t max = strcmp(key, "session_idle_minutes") == 0 ? 10080 :
			       strcmp(key, "low_space_percent") == 0 ? 90 :
			       strcmp(key, "stats_interval_seconds") == 0 ? 3600 :
			       strcmp(key, "stats_keep_minutes") == 0 ? 10080 : 65535;
		if (num && (r = parse_u64(value, max, num)) < 0)
			return vela_error_context(r, "%s:%u: %s", path, lineno, key);
		if (!num && strcmp(key, "autostop_on_exit") == 0) {
			if ((r = parse_bool(value, &st->autostop_on_exit)) < 0)
				return vela_error_context(r, "%s:%u: %s", path, lineno, key);
		} else if (!num && strcmp(key, "web_root") == 0) {
			free(st->web_root);
			st->web_root = xstrdup(value);
		} else if (!num && strcmp(key, "listen") == 0) {
			free(st->listen);
			st->listen = xstrdup(value);
		} else if (!num) {
			return vela_error(VELA_E_CONFIG, "%s:%u: unknown setting \"%s\"", path, lineno, key);
		}
	}
	return 0;
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
		{ "https-port", required_argument, NULL, 'S' },
		{ "http-port", required_argument, NULL, 'P' },
		{ "listen", required_argument, NULL, 'l' },
		{ "config", required_argument, NULL, 'c' },
		{ "autostop-on-exit", no_argument, NULL, 'A' },
		{ "web-root", required_argument, NULL, 'W' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	bool foreground = false, autostop_flag = false;
	const char *web_root = NULL;
	struct api_opts ao = { 0 };
	const char *config = NULL, *https = NULL, *http = NULL, *listen_addr = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "vhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'f': foreground = true; break;
		case 'H': setenv("VELA_HOME", optarg, 1); break;
		case 's': ao.unix_path = optarg; break;
		case 'S': https = optarg; break;
		case 'P': http = optarg; break;
		case 'l': listen_addr = optarg; break;
		case 'c': config = optarg; break;
		case 'A': autostop_flag = true; break;
		case 'W': web_root = optarg; break;
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
	struct settings st = { .https_port = 8333, .http_port = 8222 };
	CLEANUP_FREE char *default_config = path_join(vela_home(), "velad.conf");
	int r = read_config(config ? config : default_config, config != NULL, &st);
	if (r == 0 && https && (r = parse_u64(https, 65535, &st.https_port)) < 0)
		vela_error_context(r, "--https-port");
	if (r == 0 && http && (r = parse_u64(http, 65535, &st.http_port)) < 0)
		vela_error_context(r, "--http-port");
	if (r < 0) {
		fprintf(stderr, "velad: %s\n", vela_errmsg());
		free(st.listen);
		free(st.web_root);
		return 2;
	}
	if (listen_addr) {
		free(st.listen);
		st.listen = xstrdup(listen_addr);
	}
	ao.https_port = (unsigned)st.https_port;
	ao.http_port = (unsigned)st.http_port;
	ao.bind_addr = st.listen;
	/* The UI: as configured, else where an installation puts it. */
	ao.web_root = web_root ? web_root : st.web_root;
	if (!ao.web_root && access(VELA_WEB_DIR "/index.html", R_OK) == 0)
		ao.web_root = VELA_WEB_DIR;
	ao.session_idle_ms = (int64_t)st.idle_minutes * 60000;
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

	struct host_opts ho = { .vmx_binary = getenv("VELA_VMX_BINARY"), .low_space_percent = (int)st.low_space_percent,
				 .stats_interval_ms = (int)st.stats_interval_s * 1000, .stats_keep_ms = (int)st.stats_keep_min * 60000 };
	struct host *h = NULL;
	struct api *a = NULL;
	r = host_open(&ho, &h);
	if (r == 0)
		r = api_start(h, &ao, &a);
	if (r < 0) {
		vela_log(VELA_LOG_ERROR, "velad: %s", vela_errmsg());
		fprintf(stderr, "velad: %s\n", vela_errmsg());
		host_close(h);
		free(st.listen);
		free(st.web_root);
		return 1;
	}
	CLEANUP_FREE char *pidfile = path_join(vela_run_root(), "velad.pid");
	CLEANUP_FREE char *pid = xasprintf("%d\n", (int)getpid());
	write_file_atomic(pidfile, pid, strlen(pid));
	vela_log(VELA_LOG_INFO, "velad %s ready (home %s)", VELA_VERSION, vela_home());
	host_autostart_run(h);   /* in the background: the API is up meanwhile */

	int sig = 0;
	sigwait(&stop, &sig);
	bool autostop = autostop_flag || st.autostop_on_exit;
	vela_log(VELA_LOG_INFO, "velad: signal %d, stopping (%s)", sig,
		 autostop ? "autostop: the VMs stop as their settings say" : "VMs keep running");
	api_stop(a);
	/* Off by default: a restart of velad must not touch the VMs.  Hosts
	 * whose service manager cannot tell a shutdown from a restart turn it
	 * on; the systemd unit asks systemd instead. */
	if (autostop && host_autostop_run(h, "autostop", NULL) < 0)
		vela_log(VELA_LOG_WARN, "velad: autostop: %s", vela_errmsg());
	host_close(h);
	unlink(pidfile);
	free(st.listen);
	free(st.web_root);
	vela_log_close_file();
	return 0;
}
