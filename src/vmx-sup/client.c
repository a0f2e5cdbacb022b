/* client.c - talk to a VM's supervisor; spawn one at power-on. */
#include "common.h"
#include "vmx.h"
#include "vmx-sup.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>

static const char *const state_names[] = {
	[VM_OFF] = "off", [VM_STARTING] = "starting", [VM_ON] = "on", [VM_PAUSED] = "paused",
	[VM_SUSPENDED] = "suspended", [VM_STUCK] = "stuck", [VM_STOPPING] = "stopping",
	[VM_SUSPENDING] = "suspending", [VM_RESUMING] = "resuming", [VM_RESETTING] = "resetting",
};

const char *vm_state_name(enum vm_state s)
{
	return (unsigned)s < ARRAY_SIZE(state_names) ? state_names[s] : "unknown";
}

static const char *const mode_names[] = { "hard", "soft", "trysoft" };

int vm_power_mode_parse(const char *s, enum vm_power_mode *out)
{
	for (size_t i = 0; i < ARRAY_SIZE(mode_names); i++) {
		if (str_ieq(s, mode_names[i])) {
			*out = (enum vm_power_mode)i;
			return 0;
		}
	}
	return vela_error(VELA_E_INVAL, "power mode must be hard, soft or trysoft, not \"%s\"", s);
}

const char *vm_power_mode_name(enum vm_power_mode m)
{
	return mode_names[m];
}

int vmxsup_run_dir(const char *config_path, char **out)
{
	char real[PATH_MAX];
	if (!realpath(config_path, real))
		return vela_error_errno(errno, "%s", config_path);
	uint64_t h = hash_fnv1a64(real, strlen(real));
	*out = xasprintf("%s/vm/%016llx", vela_run_root(), (unsigned long long)h);
	return 0;
}

bool vmxsup_is_running(const char *config_path)
{
	CLEANUP_FREE char *dir = NULL;
	if (vmxsup_run_dir(config_path, &dir) < 0)
		return false;
	CLEANUP_FREE char *lock = xasprintf("%s/lock", dir);
	CLEANUP_CLOSE int fd = open(lock, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	/* The supervisor holds an exclusive lock for its whole life. */
	if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
		flock(fd, LOCK_UN);
		return false;
	}
	return true;
}

/* Read one '\n'-terminated line within the deadline. */
static int read_line(int fd, int64_t deadline, char **out)
{
	struct strbuf sb = { 0 };
	for (;;) {
		int64_t left = deadline - time_mono_ms();
		if (left <= 0) {
			strbuf_free(&sb);
			return vela_error(VELA_E_TIMEOUT, "no reply from the VM supervisor in time");
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int pr = poll(&p, 1, (int)left);
		if (pr < 0 && errno != EINTR) {
			strbuf_free(&sb);
			return vela_error_errno(errno, "poll");
		}
		if (pr <= 0)
			continue;
		char c[4096];
		ssize_t n = read(fd, c, sizeof c);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int e = errno;
			strbuf_free(&sb);
			return vela_error_errno(e, "read from the VM supervisor");
		}
		if (n == 0) {
			strbuf_free(&sb);
			return vela_error(VELA_E_CONNRESET, "the VM supervisor closed the connection without a reply");
		}
		strbuf_append(&sb, c, (size_t)n);
		char *nl = memchr(sb.data, '\n', sb.len);
		if (nl) {
			*nl = '\0';
			*out = strbuf_steal(&sb);
			return 0;
		}
		if (sb.len > (16u << 20)) {
			strbuf_free(&sb);
			return vela_error(VELA_E_PROTOCOL, "reply from the VM supervisor is too long");
		}
	}
}

/* Turn a reply object into 0 or its error. */
static int reply_status(json_t *reply)
{
	if (!json_is_object(reply))
		return vela_error(VELA_E_PROTOCOL, "reply is not a JSON object");
	if (json_is_true(json_object_get(reply, "ok")))
		return 0;
	json_t *err = json_object_get(reply, "error");
	json_int_t code = json_integer_value(json_object_get(err, "code"));
	const char *msg = json_string_value(json_object_get(err, "message"));
	return vela_error((int)(code ? code : VELA_E_INTERNAL), "%s", msg ? msg : "unknown error");
}

int vmxsup_call(const char *config_path, json_t *request, json_t **reply, int timeout_ms)
{
	CLEANUP_FREE char *dir = NULL;
	int r = vmxsup_run_dir(config_path, &dir);
	if (r < 0)
		return r;
	if (!vmxsup_is_running(config_path))
		return vela_error(VELA_E_NOTRUNNING, "%s: the VM is off", config_path);
	CLEANUP_FREE char *sock = xasprintf("%s/control.sock", dir);
	CLEANUP_CLOSE int fd = unix_connect(sock);
	if (fd < 0)
		return vela_error_context(fd, "%s: cannot reach the VM supervisor", config_path);
	CLEANUP_FREE char *text = json_dumps(request, JSON_COMPACT);
	CLEANUP_FREE char *line = xasprintf("%s\n", text);
	if ((r = send_all(fd, line, strlen(line))) < 0)
		return vela_error_context(r, "send to the VM supervisor");
	CLEANUP_FREE char *answer = NULL;
	if ((r = read_line(fd, time_mono_ms() + timeout_ms, &answer)) < 0)
		return r;
	json_error_t jerr;
	json_t *j = json_loads(answer, 0, &jerr);
	if (!j)
		return vela_error(VELA_E_PROTOCOL, "malformed reply from the VM supervisor: %s", jerr.text);
	r = reply_status(j);
	if (r == 0 && reply)
		*reply = j;
	else
		json_decref(j);
	return r;
}

/* vela-vmx lives next to vela when installed, and in ../vmx-sup/ in the
 * build tree; otherwise $PATH decides. */
static char *default_vmx_binary(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n > 0) {
		self[n] = '\0';
		CLEANUP_FREE char *dir = path_dirname(self);
		static const char *const rel[] = { "vela-vmx", "../vmx-sup/vela-vmx" };
		for (size_t i = 0; i < ARRAY_SIZE(rel); i++) {
			char *cand = xasprintf("%s/%s", dir, rel[i]);
			if (access(cand, X_OK) == 0)
				return cand;
			free(cand);
		}
	}
	return xstrdup("vela-vmx");
}

int vmxsup_spawn(const char *config_path, const char *vmx_binary, json_t **reply, int timeout_ms)
{
	int p[2];
	CLEANUP_FREE char *bin = vmx_binary ? xstrdup(vmx_binary) : default_vmx_binary();
	if (access(config_path, R_OK) < 0)
		return vela_error_errno(errno, "%s", config_path);
	if (vmxsup_is_running(config_path))
		return vela_error(VELA_E_BADSTATE, "%s: the VM is already powered on", config_path);
	if (pipe2(p, O_CLOEXEC) < 0)
		return vela_error_errno(errno, "pipe");
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(p[0]);
		close(p[1]);
		return vela_error_errno(e, "fork");
	}
	if (pid == 0) {
		char fdbuf[16];
		/* A daemon caller (velad) blocks its stop signals for sigwait;
		 * the mask survives exec, and the supervisor must get them. */
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		fd_set_cloexec(p[1], false);
		snprintf(fdbuf, sizeof fdbuf, "%d", p[1]);
		execlp(bin, "vela-vmx", "--daemon", "--ready-fd", fdbuf, config_path, (char *)NULL);
		dprintf(p[1], "{\"ok\":false,\"error\":{\"code\":%d,\"name\":\"VELA_E_NOTFOUND\",\"message\":\"cannot run %s: %s\"}}\n",
			VELA_E_NOTFOUND, bin, strerror(errno));
		_exit(127);
	}
	close(p[1]);
	/* The first child daemonizes and exits at once. */
	int status;
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	CLEANUP_CLOSE int rfd = p[0];
	CLEANUP_FREE char *line = NULL;
	int r = read_line(rfd, time_mono_ms() + timeout_ms, &line);
	if (r < 0)
		return vela_error_context(r, "power on %s", config_path);
	json_error_t jerr;
	json_t *j = json_loads(line, 0, &jerr);
	if (!j)
		return vela_error(VELA_E_PROTOCOL, "power on %s: malformed status from vela-vmx: %s", config_path, jerr.text);
	r = reply_status(j);
	if (r == 0 && reply)
		*reply = j;
	else
		json_decref(j);
	return r;
}

/* ------------------------------------------------------ suspended VMs */

bool vmxsup_is_suspended(const char *config_path, char **vmstate)
{
	if (vmstate)
		*vmstate = NULL;
	char *text = NULL;
	size_t len;
	/* Cheap first: most .vmx files have no checkpoint at all. */
	if (read_file(config_path, 4u << 20, &text, &len) < 0)
		return false;
	bool maybe = strstr(text, "checkpoint.vmState") || strcasestr(text, "checkpoint.vmstate");
	free(text);
	if (!maybe)
		return false;
	struct vmx_file *f = NULL;
	if (vmx_file_load(config_path, &f) < 0)
		return false;
	const char *v = vmx_get(f, "checkpoint.vmState");
	char *path = NULL;
	CLEANUP_FREE char *dir = path_dirname(config_path);
	bool yes = v && *v && vela_resolve_path(v, dir, &path) == 0 && access(path, F_OK) == 0;
	vmx_file_free(f);
	if (yes && vmstate)
		*vmstate = path;
	else
		free(path);
	return yes;
}

int vmxsup_discard_suspended(const char *config_path)
{
	CLEANUP_FREE char *state = NULL;
	if (vmxsup_is_running(config_path))
		return vela_error(VELA_E_BADSTATE, "%s: the VM is running", config_path);
	if (!vmxsup_is_suspended(config_path, &state))
		return vela_error(VELA_E_BADSTATE, "%s: the VM is not suspended", config_path);
	/* A snapshot's memory state (readOnly) stays with its snapshot. */
	struct vmx_file *f = NULL;
	bool keep = false;
	if (vmx_file_load(config_path, &f) == 0) {
		const char *ro = vmx_get(f, "checkpoint.vmState.readOnly");
		keep = ro && str_ieq(ro, "TRUE");
		vmx_file_free(f);
	}
	const char *keys[2] = { "checkpoint.vmState", "checkpoint.vmState.readOnly" }, *none[2] = { NULL, NULL };
	int r = vmx_file_edit(config_path, keys, none, 2);
	if (r < 0)
		return vela_error_context(r, "discard the suspended state");
	if (!keep && unlink(state) < 0 && errno != ENOENT)
		return vela_error_errno(errno, "remove %s", state);
	vela_log(VELA_LOG_INFO, "%s: suspended state %s discarded (powered off)", config_path, state);
	return 0;
}
