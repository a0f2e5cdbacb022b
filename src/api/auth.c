/* auth.c - PAM logins, sessions, secrets, failed-login limits, TLS material. */
#include "common.h"
#include "auth.h"

#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <gnutls/x509.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <security/pam_appl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SESSIONS 10000
#define MAX_TRACKED 4096

struct session {
	char token[72];
	char *user;
	int64_t created, last_used;
};

/* Failed logins of one user name or one client address. */
struct failures {
	char key[128];
	unsigned count;
	int64_t first, blocked_until;
};

struct auth {
	char *service;
	int64_t max_ms, idle_ms, block_ms;
	unsigned max_failures;
	pthread_mutex_t lock;
	struct session *s;
	size_t n_s;
	struct failures *f;
	size_t n_f;
};

struct auth *auth_new(const struct auth_opts *o)
{
	struct auth *a = xcalloc(1, sizeof *a);
	a->service = xstrdup(o->pam_service ? o->pam_service : "vela");
	a->max_ms = o->session_max_ms ? o->session_max_ms : 12 * 3600 * 1000ll;
	a->idle_ms = o->session_idle_ms ? o->session_idle_ms : 30 * 60 * 1000ll;
	a->max_failures = o->max_failures ? o->max_failures : 5;
	a->block_ms = o->block_ms ? o->block_ms : 5 * 60 * 1000ll;
	pthread_mutex_init(&a->lock, NULL);
	return a;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	for (size_t i = 0; i < a->n_s; i++)
		free(a->s[i].user);
	free(a->s);
	free(a->f);
	free(a->service);
	pthread_mutex_destroy(&a->lock);
	free(a);
}

/* ------------------------------------------------------------- secrets */

static char *random_secret(const char *prefix)
{
	uint8_t raw[32];
	if (random_bytes(raw, sizeof raw) < 0)
		return NULL;
	char *s = xcalloc(1, strlen(prefix) + 2 * sizeof raw + 1);
	strcpy(s, prefix);
	for (size_t i = 0; i < sizeof raw; i++)
		sprintf(s + strlen(prefix) + 2 * i, "%02x", raw[i]);
	return s;
}

bool auth_is_session_token(const char *secret)
{
	return secret && str_starts_with(secret, "vs-");
}

char *auth_new_api_secret(void)
{
	return random_secret("vt-");
}

char *auth_digest(const char *secret)
{
	uint8_t d[32];
	if (gnutls_hash_fast(GNUTLS_DIG_SHA256, secret, strlen(secret), d) < 0)
		return NULL;
	char *hex = xcalloc(1, 2 * sizeof d + 1);
	for (size_t i = 0; i < sizeof d; i++)
		sprintf(hex + 2 * i, "%02x", d[i]);
	return hex;
}

/* Compare without an early exit, so timing tells nothing of a prefix. */
static bool same_secret(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	unsigned char diff = la != lb;
	for (size_t i = 0; i < la && i < lb; i++)
		diff |= (unsigned char)(a[i] ^ b[i]);
	return diff == 0;
}

/* ------------------------------------------------------ login failures */

static struct failures *failures_of(struct auth *a, const char *key, bool create)
{
	for (size_t i = 0; i < a->n_f; i++)
		if (strcmp(a->f[i].key, key) == 0)
			return &a->f[i];
	if (!create)
		return NULL;
	if (a->n_f == MAX_TRACKED) {
		/* Forget the oldest record; a flood of names cannot grow memory. */
		memmove(a->f, a->f + 1, (a->n_f - 1) * sizeof *a->f);
		a->n_f--;
	}
	a->f = xrealloc(a->f, (a->n_f + 1) * sizeof *a->f);
	struct failures *f = &a->f[a->n_f++];
	memset(f, 0, sizeof *f);
	snprintf(f->key, sizeof f->key, "%s", key);
	return f;
}

static bool blocked(struct auth *a, const char *key, int64_t now)
{
	struct failures *f = failures_of(a, key, false);
	return f && f->blocked_until > now;
}

static void count_failure(struct auth *a, const char *key, int64_t now)
{
	struct failures *f = failures_of(a, key, true);
	if (now - f->first > a->block_ms) {
		f->first = now;
		f->count = 0;
	}
	if (++f->count >= a->max_failures)
		f->blocked_until = now + a->block_ms;
}

static void clear_failures(struct auth *a, const char *key)
{
	struct failures *f = failures_of(a, key, false);
	if (f)
		f->count = 0, f->blocked_until = 0;
}

/* ----------------------------------------------------------------- PAM */

static int pam_conversation(int n, const struct pam_message **msg, struct pam_response **resp, void *data)
{
	const char *password = data;
	struct pam_response *r = calloc((size_t)n, sizeof *r);
	if (!r)
		return PAM_BUF_ERR;
	for (int i = 0; i < n; i++) {
		if (msg[i]->msg_style == PAM_PROMPT_ECHO_OFF || msg[i]->msg_style == PAM_PROMPT_ECHO_ON) {
			r[i].resp = strdup(password);
			if (!r[i].resp) {
				for (int k = 0; k < i; k++)
					free(r[k].resp);
				free(r);
				return PAM_BUF_ERR;
			}
		}
	}
	*resp = r;
	return PAM_SUCCESS;
}

static int pam_check(const char *service, const char *user, const char *password)
{
	struct pam_conv conv = { pam_conversation, (void *)password };
	pam_handle_t *ph = NULL;
	int rc = pam_start(service, user, &conv, &ph);
	if (rc == PAM_SUCCESS)
		rc = pam_authenticate(ph, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
	if (rc == PAM_SUCCESS)
		rc = pam_acct_mgmt(ph, PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK);
	if (ph)
		pam_end(ph, rc);
	if (rc != PAM_SUCCESS)
		return vela_error(VELA_E_AUTH, "login of %s refused", user);
	return 0;
}

int auth_login(struct auth *a, const char *user, const char *password, const char *client, char **token,
	       int64_t *expires_ms)
{
	if (!user || !*user || strlen(user) > 64 || !password || strlen(password) > 1024)
		return vela_error(VELA_E_AUTH, "login refused: user and password are required");
	char ukey[100], ckey[100];
	snprintf(ukey, sizeof ukey, "user:%s", user);
	snprintf(ckey, sizeof ckey, "addr:%s", client ? client : "?");
	int64_t now = time_mono_ms();
	pthread_mutex_lock(&a->lock);
	bool no = blocked(a, ukey, now) || blocked(a, ckey, now);
	pthread_mutex_unlock(&a->lock);
	if (no)
		return vela_error(VELA_E_LIMIT, "login of %s refused: too many failed logins, try again later", user);

	int r = pam_check(a->service, user, password);

	pthread_mutex_lock(&a->lock);
	if (r < 0) {
		count_failure(a, ukey, now);
		count_failure(a, ckey, now);
		pthread_mutex_unlock(&a->lock);
		return r;
	}
	clear_failures(a, ukey);
	clear_failures(a, ckey);
	/* Drop dead sessions before adding one. */
	size_t k = 0;
	for (size_t i = 0; i < a->n_s; i++) {
		struct session *s = &a->s[i];
		if (now - s->created > a->max_ms || now - s->last_used > a->idle_ms)
			free(s->user);
		else
			a->s[k++] = *s;
	}
	a->n_s = k;
	if (a->n_s == MAX_SESSIONS) {
		pthread_mutex_unlock(&a->lock);
		return vela_error(VELA_E_LIMIT, "login of %s refused: %d sessions are open", user, MAX_SESSIONS);
	}
	char *t = random_secret("vs-");
	if (!t) {
		pthread_mutex_unlock(&a->lock);
		return vela_error(VELA_E_SYSTEM, "login: no random bytes");
	}
	a->s = xrealloc(a->s, (a->n_s + 1) * sizeof *a->s);
	struct session *s = &a->s[a->n_s++];
	snprintf(s->token, sizeof s->token, "%s", t);
	s->user = xstrdup(user);
	s->created = s->last_used = now;
	pthread_mutex_unlock(&a->lock);
	*token = t;
	*expires_ms = time_real_ms() + a->max_ms;
	return 0;
}

int auth_session_user(struct auth *a, const char *token, char **user)
{
	int64_t now = time_mono_ms();
	int r = vela_error(VELA_E_SESSION, "no such session (expired, idle too long, or logged out)");
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; token && i < a->n_s; i++) {
		struct session *s = &a->s[i];
		if (!same_secret(s->token, token))
			continue;
		if (now - s->created <= a->max_ms && now - s->last_used <= a->idle_ms) {
			s->last_used = now;
			*user = xstrdup(s->user);
			r = 0;
			vela_error_clear();
		}
		break;
	}
	pthread_mutex_unlock(&a->lock);
	return r;
}

void auth_logout(struct auth *a, const char *token)
{
	pthread_mutex_lock(&a->lock);
	for (size_t i = 0; token && i < a->n_s; i++)
		if (same_secret(a->s[i].token, token)) {
			free(a->s[i].user);
			a->s[i] = a->s[--a->n_s];
			break;
		}
	pthread_mutex_unlock(&a->lock);
}

/* -------------------------------------------------------------- groups */

char **auth_user_groups(const char *user, size_t *n)
{
	struct passwd pw, *pwp = NULL;
	char buf[4096];
	*n = 0;
	char **out = xcalloc(1, sizeof *out);
	if (getpwnam_r(user, &pw, buf, sizeof buf, &pwp) != 0 || !pwp)
		return out;
	int ng = 64;
	gid_t *gids = xcalloc((size_t)ng, sizeof *gids);
	if (getgrouplist(user, pw.pw_gid, gids, &ng) < 0) {
		gids = xrealloc(gids, (size_t)ng * sizeof *gids);
		if (getgrouplist(user, pw.pw_gid, gids, &ng) < 0)
			ng = 0;
	}
	out = xrealloc(out, ((size_t)ng + 1) * sizeof *out);
	for (int i = 0; i < ng; i++) {
		struct group gr, *grp = NULL;
		char gbuf[8192];
		if (getgrgid_r(gids[i], &gr, gbuf, sizeof gbuf, &grp) == 0 && grp)
			out[(*n)++] = xstrdup(gr.gr_name);
	}
	out[*n] = NULL;
	free(gids);
	return out;
}

void auth_groups_free(char **groups)
{
	for (char **g = groups; g && *g; g++)
		free(*g);
	free(groups);
}

/* ---------------------------------------------------------- TLS material */

static int make_self_signed(const char *cert_path, const char *key_path)
{
	gnutls_x509_privkey_t key = NULL;
	gnutls_x509_crt_t crt = NULL;
	gnutls_datum_t kpem = { 0 }, cpem = { 0 };
	int r = 0, rc;
	char host[256] = "localhost";
	gethostname(host, sizeof host - 1);
	uint8_t serial[16];
	random_bytes(serial, sizeof serial);
	serial[0] &= 0x7f;   /* a positive number */
	time_t now = time(NULL);
	if ((rc = gnutls_x509_privkey_init(&key)) < 0 ||
	    (rc = gnutls_x509_privkey_generate(key, GNUTLS_PK_ECDSA, GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0)) < 0 ||
	    (rc = gnutls_x509_crt_init(&crt)) < 0 || (rc = gnutls_x509_crt_set_version(crt, 3)) < 0 ||
	    (rc = gnutls_x509_crt_set_serial(crt, serial, sizeof serial)) < 0 ||
	    (rc = gnutls_x509_crt_set_activation_time(crt, now - 3600)) < 0 ||
	    (rc = gnutls_x509_crt_set_expiration_time(crt, now + 10 * 365 * 24 * 3600l)) < 0 ||
	    (rc = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, host, (unsigned)strlen(host))) < 0 ||
	    (rc = gnutls_x509_crt_set_dn_by_oid(crt, GNUTLS_OID_X520_ORGANIZATION_NAME, 0, "Vela", 4)) < 0 ||
	    (rc = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, host, (unsigned)strlen(host),
							 GNUTLS_FSAN_SET)) < 0 ||
	    (rc = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_DNSNAME, "localhost", 9, GNUTLS_FSAN_APPEND)) < 0 ||
	    (rc = gnutls_x509_crt_set_subject_alt_name(crt, GNUTLS_SAN_IPADDRESS, "\x7f\0\0\1", 4, GNUTLS_FSAN_APPEND)) < 0 ||
	    (rc = gnutls_x509_crt_set_key(crt, key)) < 0 ||
	    (rc = gnutls_x509_crt_set_key_usage(crt, GNUTLS_KEY_DIGITAL_SIGNATURE)) < 0 ||
	    (rc = gnutls_x509_crt_set_key_purpose_oid(crt, GNUTLS_KP_TLS_WWW_SERVER, 0)) < 0 ||
	    (rc = gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0)) < 0 ||
	    (rc = gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &kpem)) < 0 ||
	    (rc = gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &cpem)) < 0)
		r = vela_error(VELA_E_SYSTEM, "make a TLS certificate: %s", gnutls_strerror(rc));
	/* The key first and private: a crash between leaves no certificate
	 * without its key. */
	if (r == 0 && (r = write_file_atomic(key_path, kpem.data, kpem.size)) == 0 && chmod(key_path, 0600) < 0)
		r = vela_error_errno(errno, "chmod %s", key_path);
	if (r == 0)
		r = write_file_atomic(cert_path, cpem.data, cpem.size);
	gnutls_free(kpem.data);
	gnutls_free(cpem.data);
	if (crt)
		gnutls_x509_crt_deinit(crt);
	if (key)
		gnutls_x509_privkey_deinit(key);
	return r;
}

int auth_tls_material(const char *dir, char **cert, char **key)
{
	CLEANUP_FREE char *cp = path_join(dir, "velad.crt");
	CLEANUP_FREE char *kp = path_join(dir, "velad.key");
	int r = mkdir_p(dir, 0700);
	if (r < 0)
		return r;
	if (access(cp, R_OK) < 0 || access(kp, R_OK) < 0) {
		vela_log(VELA_LOG_INFO, "making a self-signed TLS certificate in %s", dir);
		if ((r = make_self_signed(cp, kp)) < 0)
			return r;
	}
	size_t n;
	if ((r = read_file(cp, 1 << 20, cert, &n)) < 0)
		return r;
	if ((r = read_file(kp, 1 << 20, key, &n)) < 0) {
		free(*cert);
		*cert = NULL;
	}
	return r;
}
