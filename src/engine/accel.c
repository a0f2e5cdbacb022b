/* accel.c - choose between KVM and TCG. */
#include "common.h"
#include "engine.h"

#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

bool engine_cpuinfo_has_virt(const char *cpuinfo)
{
	/* Look only at "flags" lines, for the whole words vmx or svm. */
	for (const char *line = cpuinfo; line && *line; ) {
		const char *end = strchr(line, '\n');
		size_t n = end ? (size_t)(end - line) : strlen(line);
		if (n > 5 && strncmp(line, "flags", 5) == 0) {
			const char *colon = memchr(line, ':', n);
			if (colon) {
				CLEANUP_FREE char *flags = xstrndup(colon + 1, n - (size_t)(colon + 1 - line));
				char *save = NULL;
				for (char *t = strtok_r(flags, " \t", &save); t; t = strtok_r(NULL, " \t", &save))
					if (strcmp(t, "vmx") == 0 || strcmp(t, "svm") == 0)
						return true;
			}
		}
		line = end ? end + 1 : NULL;
	}
	return false;
}

void engine_probe_host(struct engine_host_virt *out)
{
	CLEANUP_FREE char *cpuinfo = NULL;
	memset(out, 0, sizeof *out);
	if (read_file("/proc/cpuinfo", 16u << 20, &cpuinfo, NULL) == 0)
		out->cpu_flag = engine_cpuinfo_has_virt(cpuinfo);

	CLEANUP_CLOSE int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(out->detail, sizeof out->detail, "/dev/kvm: %s", strerror(errno));
		return;
	}
	int v = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (v != KVM_API_VERSION) {
		snprintf(out->detail, sizeof out->detail, "/dev/kvm: API version %d, expected %d", v, KVM_API_VERSION);
		return;
	}
	int vm = ioctl(fd, KVM_CREATE_VM, 0);
	if (vm < 0) {
		snprintf(out->detail, sizeof out->detail, "/dev/kvm: cannot create a VM: %s", strerror(errno));
		return;
	}
	close(vm);
	out->kvm_usable = true;
	snprintf(out->detail, sizeof out->detail, "/dev/kvm usable");
}

int engine_choose_accel(enum vmx_accel requested, const struct engine_host_virt *host,
			enum engine_accel *out, char *why, size_t why_len)
{
	/* Both conditions: some hosts expose a /dev/kvm that is not backed by
	 * hardware virtualization (nested paravirtual flavours) and hang real guests. */
	bool kvm = host->cpu_flag && host->kvm_usable;
	switch (requested) {
	case VMX_ACCEL_TCG:
		*out = ENGINE_ACCEL_TCG;
		snprintf(why, why_len, "tcg requested");
		return 0;
	case VMX_ACCEL_KVM:
		if (!kvm)
			return vela_error(VELA_E_NOTSUP, "engine.accel = kvm, but this host cannot run KVM guests (%s; %s)",
					  host->cpu_flag ? "CPU has vmx/svm" : "no vmx/svm in /proc/cpuinfo", host->detail);
		*out = ENGINE_ACCEL_KVM;
		snprintf(why, why_len, "kvm requested");
		return 0;
	case VMX_ACCEL_AUTO:
		break;
	}
	*out = kvm ? ENGINE_ACCEL_KVM : ENGINE_ACCEL_TCG;
	snprintf(why, why_len, "auto: %s (%s; %s)", kvm ? "kvm" : "tcg",
		 host->cpu_flag ? "CPU has vmx/svm" : "no vmx/svm in /proc/cpuinfo", host->detail);
	return 0;
}

const char *engine_accel_name(enum engine_accel a)
{
	return a == ENGINE_ACCEL_KVM ? "kvm" : "tcg";
}
