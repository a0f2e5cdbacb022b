/*
 * auth.h - who is calling (private to src/api): PAM logins, sessions, API
 * token secrets, failed-login limits, and the TLS material of the HTTPS
 * listener.
 */
#ifndef VELA_API_AUTH_H
#define VELA_API_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct auth;

struct auth_opts {
	const char *pam_service;     /* NULL = "vela" */
	int64_t session_max_ms;      /* absolute lifetime; 0 = 12 h */
	int64_t session_idle_ms;     /* idle timeout; 0 = 30 min */
	unsigned max_failures;       /* failed logins per user or address before a block; 0 = 5 */
	int64_t block_ms;            /* how long that block lasts; 0 = 5 min */
};

struct auth *auth_new(const struct auth_opts *opts);
void auth_free(struct auth *a);

/*
 * Check user/password with PAM (authenticate + account).  Refused while the
 * user or the client address is blocked (VELA_E_LIMIT); a failure counts
 * towards the block (VELA_E_AUTH).  On success *token gets a new session's
 * secret (caller frees) and *expires_ms its absolute expiry.
 */
int auth_login(struct auth *a, const char *user, const char *password, const char *client, char **token,
	       int64_t *expires_ms);
/* The user of a live session (touching it), or VELA_E_SESSION. */
int auth_session_user(struct auth *a, const char *token, char **user);
void auth_logout(struct auth *a, const char *token);

/* Session secrets and API token secrets look different, so one header
 * carries either: "vs-..." (session) or "vt-..." (API token). */
bool auth_is_session_token(const char *secret);
/* A new API token secret "vt-<64 hex>" (caller frees). */
char *auth_new_api_secret(void);
/* SHA-256 of a secret, hex (caller frees): what the host stores. */
char *auth_digest(const char *secret);

/* The user's group names (primary first), NULL-terminated; caller frees
 * with auth_groups_free.  *n gets the count. */
char **auth_user_groups(const char *user, size_t *n);
void auth_groups_free(char **groups);

/*
 * TLS material in dir (velad.crt, velad.key): made at first use (a
 * self-signed certificate for this host name, ECDSA P-256, 10 years).
 * *cert and *key get PEM text (caller frees).
 */
int auth_tls_material(const char *dir, char **cert, char **key);

#endif
