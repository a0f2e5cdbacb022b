/*
 * api.h - velad's HTTP/JSON API (libmicrohttpd) over the host core.
 *
 * Routes (described for clients in data/openapi.json, served at
 * /api/v1/openapi.json; all JSON; errors are {"ok": false, "error": {code, name,
 * message}} with a 4xx/5xx status chosen from the error code):
 *
 *   GET    /api/v1/host                      host info
 *   GET    /api/v1/host/stats?since=         host CPU and memory samples (host readonly)
 *   GET    /api/v1/datastores                datastores with capacity and free space
 *   POST   /api/v1/datastores                add a folder as a datastore {name, path} (host admin)
 *   DELETE /api/v1/datastores/NAME           forget one (files stay)
 *   GET    /api/v1/datastores/NAME/browse?path=REL   a folder's entries
 *   GET    /api/v1/datastores/NAME/files/REL    download (host readonly)
 *   PUT    /api/v1/datastores/NAME/files/REL    upload, streamed (host admin)
 *   GET    /api/v1/vms                       inventory with power states
 *   POST   /api/v1/vms                       register {config, name?, folder?}
 *   POST   /api/v1/vms/create                a new VM {name, datastore?, folder?, memsize?,
 *                                            vcpus?, guestOS?, disks?, cdrom?, nic?}
 *   GET    /api/v1/vms/ID                    one VM with its supervisor status
 *   PATCH  /api/v1/vms/ID                    reconfigure {name?, folder?, memsize?, vcpus?, guestOS?,
 *                                            annotation?, cdrom?, nic?} (pending while on)
 *   DELETE /api/v1/vms/ID?files=1            unregister (files stay), or delete with files (a task)
 *   POST   /api/v1/vms/ID/power              {op: start|stop|reset|pause|unpause|suspend|resume, mode?} (a task)
 *   POST   /api/v1/vms/ID/answer             {choice}
 *   PUT    /api/v1/vms/ID/autostart          {enabled, order?, delay?, stop?}
 *   GET    /api/v1/vms/ID/stats?since=       the VM's CPU, memory and disk samples
 *   GET    /api/v1/vms/ID/log                the end of the VM's log (256 KiB)
 *   GET    /api/v1/vms/ID/screenshot         the running VM's screen, image/png (operator)
 *   GET    /api/v1/vms/ID/snapshots          the snapshot tree
 *   POST   /api/v1/vms/ID/snapshots          take one {name, description?} (operator; a task)
 *   POST   /api/v1/vms/ID/snapshots/revert   {name} (admin; VM off; a task)
 *   POST   /api/v1/vms/ID/snapshots/delete   {name} (admin; a task)
 *   GET    /api/v1/vms/ID/guest              the guest agent: heartbeat, OS, addresses (running VM)
 *   GET    /api/v1/vms/ID/guestinfo?key=     guestinfo values, or one (admin)
 *   PUT    /api/v1/vms/ID/guestinfo          {key, value} set, or unset without value (admin)
 *   POST   /api/v1/vms/ID/backup             {datastore, folder?, quiesce?, compress?, keep?} hot backup (admin; a task)
 *   GET    /api/v1/vms/ID/backups?datastore=D[&folder=F]  the VM's backups there, newest first
 *   GET    /api/v1/vms/ID/backup-schedule    the VM's backup schedule
 *   PUT    /api/v1/vms/ID/backup-schedule    {datastore, folder?, every (s), keep, quiesce?, compress?, now?} (admin)
 *   DELETE /api/v1/vms/ID/backup-schedule    no more scheduled backups (admin)
 *   GET    /api/v1/vms/ID/console/KIND       WebSocket to the serial (KIND serial) or VNC
 *                                            (vnc) console (operator)
 *   GET    /api/v1/autostart                 the start order
 *   POST   /api/v1/host/autostop             stop the VMs as their autostop says
 *   GET    /api/v1/backup-schedules          the scheduled backups of the VMs one may see
 *   GET    /api/v1/tasks?vm=&state=&after=&limit=   recent tasks
 *   GET    /api/v1/tasks/ID?wait=S           one task (wait: until it has ended)
 *   POST   /api/v1/tasks/ID/cancel           ask it to stop
 *   GET    /api/v1/questions                 what VMs are waiting for an answer to
 *   GET    /api/v1/events?vm=&severity=&after=&since=&limit=
 *   GET    /api/v1/events/stream?vm=&severity=&after=   live, text/event-stream
 *
 * Operations run as tasks (power, create, delete with files, autostop,
 * uploads) wait for their task unless ?wait=0, which answers 202 {task}.
 *
 *   GET    /api/v1/session                   who am I
 *   POST   /api/v1/session                   log in {user, password} (PAM) -> token + cookie
 *   DELETE /api/v1/session                   log out
 *   GET/POST /api/v1/permissions, DELETE /api/v1/permissions/ID   grants (host admin)
 *   GET/POST /api/v1/tokens, DELETE /api/v1/tokens/ID             API tokens
 *
 * Listeners:
 * - a UNIX socket for the local CLI.  Who may use it is decided from the
 *   peer's credentials (SO_PEERCRED): root, velad's own user and members of
 *   the group "vela" act as administrators; everybody else gets 403.
 * - HTTPS (self-signed certificate made at first start): a session token
 *   (cookie vela_session or "Authorization: Bearer") or an API token, and
 *   the user's grants decide; VMs a user may not see answer 404.
 * - plain HTTP, which only redirects to HTTPS.
 */
#ifndef VELA_API_H
#define VELA_API_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct host;
struct api;

struct api_opts {
	const char *unix_path;     /* NULL = <vela_run_root()>/velad.sock */
	unsigned https_port;       /* 0 = no HTTPS listener */
	unsigned http_port;        /* 0 = no redirecting HTTP listener */
	const char *bind_addr;     /* NULL = every address */
	const char *tls_dir;       /* NULL = <vela_home()>/tls */
	const char *pam_service;   /* NULL = "vela" */
	int64_t session_idle_ms;   /* 0 = 30 min */
	size_t max_body;           /* request bodies above this get 413; 0 = 1 MiB */
	const char *web_root;      /* the web UI's files, served over HTTPS outside /api/; NULL = none */
};

int api_start(struct host *h, const struct api_opts *opts, struct api **out);
void api_stop(struct api *a);

/* HTTP status for a Vela error code (negative or positive). */
unsigned api_http_status(int code);

/*
 * Decode a JSON request body: an object whose members have the types the
 * spec string names, "config:s name:s? folder:s?" (s string, i integer, b
 * boolean; ? optional).  Unknown members, wrong types and bad JSON are
 * VELA_E_INVAL with a message naming the member.  Strings point into *doc.
 * Exposed for the fuzz target.
 */
struct api_field {
	const char *name;
	char type;         /* 's', 'i', 'b', 'a' (array, in j) */
	bool optional;
	const char *s;
	long long i;
	bool b;
	json_t *j;         /* 'a': borrowed from *doc */
	bool present;
};
int api_decode_body(const char *body, size_t len, struct api_field *fields, size_t n, json_t **doc);

#endif /* VELA_API_H */
