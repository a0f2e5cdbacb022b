/* vmx_ident.c - VM identity: BIOS/location UUIDs, generated MAC addresses,
 * and the first-power-on / moved-VM write-back. */
#include "common.h"
#include "vmx.h"

#include <ctype.h>
#include <limits.h>
#include <string.h>

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
}

int vmx_uuid_parse(const char *s, uint8_t out[16])
{
	/* Both forms are 32 hex digits with separators; accept spaces and dashes
	 * between byte pairs, nothing else. */
	unsigned n = 0;
	const char *p = s;
	while (*p) {
		if (*p == ' ' || *p == '-') {
			p++;
			continue;
		}
		int hi = hexval((unsigned char)p[0]);
		int lo = p[1] ? hexval((unsigned char)p[1]) : -1;
		if (hi < 0 || lo < 0 || n >= 16)
			return vela_error(VELA_E_INVAL, "bad UUID \"%s\"", s);
		out[n++] = (uint8_t)(hi * 16 + lo);
		p += 2;
	}
	if (n != 16)
		return vela_error(VELA_E_INVAL, "bad UUID \"%s\": expected 16 bytes, got %u", s, n);
	return 0;
}

void vmx_uuid_format_classic(const uint8_t u[16], char *buf, size_t size)
{
	snprintf(buf, size,
		 "%02x %02x %02x %02x %02x %02x %02x %02x-%02x %02x %02x %02x %02x %02x %02x %02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
		 u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

void vmx_uuid_format_canonical(const uint8_t u[16], char *buf, size_t size)
{
	snprintf(buf, size,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7],
		 u[8], u[9], u[10], u[11], u[12], u[13], u[14], u[15]);
}

int vmx_location_uuid(const char *config_path, uint8_t out[16])
{
	char real[PATH_MAX];
	if (!realpath(config_path, real))
		return vela_error_errno(errno, "vmx_location_uuid: resolve %s", config_path);
	/* Two independent 64-bit hashes of the absolute path: stable for a path,
	 * different after a move or copy. */
	CLEANUP_FREE char *a = xasprintf("vela-location:%s", real);
	CLEANUP_FREE char *b = xasprintf("%s:vela-location", real);
	uint64_t h1 = hash_fnv1a64(a, strlen(a)), h2 = hash_fnv1a64(b, strlen(b));
	for (int i = 0; i < 8; i++) {
		out[i] = (uint8_t)(h1 >> (56 - 8 * i));
		out[8 + i] = (uint8_t)(h2 >> (56 - 8 * i));
	}
	return 0;
}

/* Vela's MAC range: locally administered prefix 02:56:4c ("VL");
 * the lower half of the last 3 bytes is for generated addresses, the upper
 * half for static ones. */
void vmx_mac_generate(const uint8_t uuid_bios[16], unsigned index, char *buf)
{
	uint8_t in[17];
	memcpy(in, uuid_bios, 16);
	in[16] = (uint8_t)index;
	uint64_t h = hash_fnv1a64(in, sizeof in);
	snprintf(buf, 18, "02:56:4c:%02x:%02x:%02x",
		 (unsigned)((h >> 16) & 0x7f), (unsigned)((h >> 8) & 0xff), (unsigned)(h & 0xff));
}

int vmx_mac_check_static(const char *mac)
{
	unsigned b[6];
	char tail;
	if (strlen(mac) != 17 ||
	    sscanf(mac, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &tail) != 6)
		return vela_error(VELA_E_INVAL, "expected a MAC address like 02:56:4c:80:00:01, got \"%s\"", mac);
	if (b[0] == 0x02 && b[1] == 0x56 && b[2] == 0x4c && b[3] >= 0x80)
		return 0;
	if (b[0] == 0x00 && b[1] == 0x50 && b[2] == 0x56 && b[3] <= 0x3f)
		return 0;
	return vela_error(VELA_E_RANGE, "static MAC %s is outside the allowed ranges "
			  "02:56:4c:80:00:00-02:56:4c:ff:ff:ff and 00:50:56:00:00:00-00:50:56:3f:ff:ff", mac);
}

static int set_uuid(struct vmx_file *f, const char *key, const uint8_t u[16])
{
	char buf[64];
	vmx_uuid_format_classic(u, buf, sizeof buf);
	return vmx_set(f, key, buf);
}

static int new_uuid(uint8_t u[16])
{
	int r = random_bytes(u, 16);
	if (r < 0)
		return r;
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x40);   /* RFC 4122 version 4 */
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
	return 0;
}

static bool nic_uses_generated(struct vmx_file *f, unsigned i)
{
	char key[64];
	bool present = false;
	snprintf(key, sizeof key, "ethernet%u.present", i);
	const char *p = vmx_get(f, key);
	if (!p || parse_bool(p, &present) < 0 || !present)
		return false;
	snprintf(key, sizeof key, "ethernet%u.addressType", i);
	const char *at = vmx_get(f, key);
	return !at || str_ieq(at, "generated") || str_ieq(at, "vpx");
}

int vmx_identity_update(struct vmx_file *f, const char *config_path,
			enum vmx_uuid_action action, bool *changed)
{
	uint8_t loc[16], bios[16], cur_loc[16];
	bool regenerate_macs = false;
	int r = vmx_location_uuid(config_path, loc);
	if (r < 0)
		return r;
	bool had = vmx_file_dirty(f);
	const char *b = vmx_get(f, "uuid.bios");
	const char *l = vmx_get(f, "uuid.location");

	if (!b || vmx_uuid_parse(b, bios) < 0) {
		if ((r = new_uuid(bios)) < 0 || (r = set_uuid(f, "uuid.bios", bios)) < 0 ||
		    (r = set_uuid(f, "uuid.location", loc)) < 0)
			return r;
	} else if (l && vmx_uuid_parse(l, cur_loc) == 0 && memcmp(cur_loc, loc, 16) != 0) {
		switch (action) {
		case VMX_UUID_ASK:
			return vela_error(VELA_E_NEEDINPUT,
					  "%s: the virtual machine's configuration file has moved or was copied "
					  "(uuid.location does not match); keep its identity or create a new one?",
					  config_path);
		case VMX_UUID_KEEP:
			if ((r = set_uuid(f, "uuid.location", loc)) < 0)
				return r;
			break;
		case VMX_UUID_CREATE:
			if ((r = new_uuid(bios)) < 0 || (r = set_uuid(f, "uuid.bios", bios)) < 0 ||
			    (r = set_uuid(f, "uuid.location", loc)) < 0)
				return r;
			regenerate_macs = true;
			break;
		}
	} else if (!l || vmx_uuid_parse(l, cur_loc) < 0) {
		if ((r = set_uuid(f, "uuid.location", loc)) < 0)
			return r;
	}

	for (unsigned i = 0; i < VMX_MAX_NICS; i++) {
		char key[64], mac[18];
		if (!nic_uses_generated(f, i))
			continue;
		snprintf(key, sizeof key, "ethernet%u.generatedAddress", i);
		if (vmx_get(f, key) && !regenerate_macs)
			continue;
		vmx_mac_generate(bios, i, mac);
		if ((r = vmx_set(f, key, mac)) < 0)
			return r;
	}
	*changed = vmx_file_dirty(f) && !had ? true : vmx_file_dirty(f);
	return 0;
}
