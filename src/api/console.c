/*
 * console.c - WebSocket to console socket bridges.
 *
 * One thread per bridge (consoles are few and long-lived): it polls both
 * ends, turns client frames into bytes for the console and console bytes
 * into binary frames, answers pings and closes.  After the 101, MHD hands
 * over the connection (for TLS, the clear side of a socket pair it keeps
 * encrypting in its own thread).
 */
#include "common.h"
#include "console.h"
#include "ws.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENT_FRAME (64 * 1024)
#define FROM_CONSOLE 16384

struct bridge {
	struct console_bridges *owner;
	struct bridge *next;
	int sock, target;
	struct MHD_UpgradeResponseHandle *urh;
	uint8_t in[MAX_CLIENT_FRAME + 16];
	size_t in_len;
};

struct console_bridges {
	pthread_mutex_t lock;
	pthread_cond_t gone;
	struct bridge *open;
	int starting;            /* handshakes answered whose handler has not run yet */
	bool closing;
};

struct console_bridges *console_bridges_new(void)
{
	struct console_bridges *b = xcalloc(1, sizeof *b);
	pthread_mutex_init(&b->lock, NULL);
	pthread_cond_init(&b->gone, NULL);
	return b;
}

void console_bridges_free(struct console_bridges *b)
{
	if (!b)
		return;
	pthread_mutex_lock(&b->lock);
	b->closing = true;
	for (struct bridge *br = b->open; br; br = br->next)
		shutdown(br->target, SHUT_RDWR);   /* its thread sees the console end */
	/* A handshake whose answer never reached its client never gets its
	 * handler: wait for those a little only. */
	struct timespec until;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2;
	while (b->open || b->starting > 0)
		if (pthread_cond_timedwait(&b->gone, &b->lock, &until) != 0 && !b->open)
			break;
	pthread_mutex_unlock(&b->lock);
	pthread_cond_destroy(&b->gone);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

static int send_frame(int fd, enum ws_opcode op, const void *data, size_t len)
{
	uint8_t hdr[WS_MAX_HEADER];
	size_t h = ws_header(hdr, op, len);
	if (write_all(fd, hdr, h) < 0 || (len && write_all(fd, data, len) < 0))
		return -VELA_E_CONNRESET;
	return 0;
}

/* Client frames in br->in: their bytes to the console.  Returns 1 when the
 * client closed, 0 to go on, < 0 on a protocol error. */
static int take_client_frames(struct bridge *br)
{
	size_t at = 0;
	int r = 0;
	while (r == 0) {
		struct ws_frame f;
		ssize_t n = ws_parse(br->in + at, br->in_len - at, MAX_CLIENT_FRAME, &f);
		if (n < 0) {
			r = (int)n;
			break;
		}
		if (n == 0)
			break;
		at += (size_t)n;
		switch (f.opcode) {
		case WS_TEXT:
		case WS_BINARY:
		case WS_CONTINUATION:
			if (f.len && write_all(br->target, f.payload, f.len) < 0)
				r = 1;   /* the console went away */
			break;
		case WS_PING:
			if (send_frame(br->sock, WS_PONG, f.payload, f.len) < 0)
				r = 1;
			break;
		case WS_PONG:
			break;
		case WS_CLOSE:
			/* Echo the status code, as the protocol asks. */
			send_frame(br->sock, WS_CLOSE, f.payload, f.len >= 2 ? 2 : 0);
			r = 1;
			break;
		}
	}
	memmove(br->in, br->in + at, br->in_len - at);
	br->in_len -= at;
	return r;
}

/*
 * After our close frame: wait (briefly) for the client's, as the protocol's
 * closing handshake has it.  Closing at once could lose our frame on its
 * way through TLS, and the client would see an abnormal end.
 */
static void await_close_reply(struct bridge *br)
{
	int64_t until = time_mono_ms() + 1000;
	for (;;) {
		int left = (int)(until - time_mono_ms());
		struct pollfd p = { .fd = br->sock, .events = POLLIN };
		if (left <= 0 || poll(&p, 1, left) <= 0)
			return;
		ssize_t n = read(br->sock, br->in + br->in_len, sizeof br->in - br->in_len);
		if (n <= 0)
			return;
		br->in_len += (size_t)n;
		size_t at = 0;
		struct ws_frame f;
		ssize_t k;
		while ((k = ws_parse(br->in + at, br->in_len - at, MAX_CLIENT_FRAME, &f)) > 0) {
			if (f.opcode == WS_CLOSE)
				return;
			at += (size_t)k;
		}
		if (k < 0 || (at == 0 && br->in_len == sizeof br->in))
			return;
		memmove(br->in, br->in + at, br->in_len - at);
		br->in_len -= at;
	}
}

static void *bridge_thread(void *arg)
{
	struct bridge *br = arg;
	struct console_bridges *b = br->owner;
	/* Blocking writes on both ends: a slow browser slows the console
	 * (whose supervisor keeps its own scrollback), nothing is dropped. */
	fcntl(br->sock, F_SETFL, fcntl(br->sock, F_GETFL) & ~O_NONBLOCK);
	uint8_t out[FROM_CONSOLE];
	int r = take_client_frames(br);   /* what came with the handshake */
	while (r == 0) {
		struct pollfd p[2] = { { .fd = br->sock, .events = POLLIN }, { .fd = br->target, .events = POLLIN } };
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (p[1].revents) {
			ssize_t n = read(br->target, out, sizeof out);
			if (n <= 0) {
				/* The console ended (VM off, velad stopping): 1001 going away. */
				static const uint8_t going_away[2] = { 0x03, 0xe9 };
				if (send_frame(br->sock, WS_CLOSE, going_away, sizeof going_away) == 0)
					await_close_reply(br);
				break;
			}
			if (send_frame(br->sock, WS_BINARY, out, (size_t)n) < 0)
				break;
		}
		if (p[0].revents) {
			ssize_t n = read(br->sock, br->in + br->in_len, sizeof br->in - br->in_len);
			if (n <= 0)
				break;
			br->in_len += (size_t)n;
			r = take_client_frames(br);
			if (r < 0) {
				static const uint8_t protocol_error[2] = { 0x03, 0xea };   /* 1002 */
				vela_log(VELA_LOG_WARN, "console: %s", vela_errmsg());
				br->in_len = 0;
				if (send_frame(br->sock, WS_CLOSE, protocol_error, sizeof protocol_error) == 0)
					await_close_reply(br);
			}
		}
	}
	close(br->target);
	MHD_upgrade_action(br->urh, MHD_UPGRADE_ACTION_CLOSE);
	pthread_mutex_lock(&b->lock);
	for (struct bridge **pp = &b->open; *pp; pp = &(*pp)->next)
		if (*pp == br) {
			*pp = br->next;
			break;
		}
	pthread_cond_broadcast(&b->gone);
	pthread_mutex_unlock(&b->lock);
	free(br);
	return NULL;
}

struct pending_upgrade {
	struct console_bridges *owner;
	int target;
};

static void on_upgraded(void *cls, struct MHD_Connection *c, void *req_cls, const char *extra_in, size_t extra_in_size,
			MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
	(void)c;
	(void)req_cls;
	struct pending_upgrade *pu = cls;
	struct console_bridges *b = pu->owner;
	struct bridge *br = xcalloc(1, sizeof *br);
	br->owner = b;
	br->sock = sock;
	br->target = pu->target;
	br->urh = urh;
	free(pu);
	if (extra_in_size > sizeof br->in)
		extra_in_size = 0;   /* cannot be a client's first frames: the parse will fail it */
	memcpy(br->in, extra_in, extra_in_size);
	br->in_len = extra_in_size;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_mutex_lock(&b->lock);
	b->starting--;
	pthread_t tid;
	bool ok = !b->closing && pthread_create(&tid, &attr, bridge_thread, br) == 0;
	if (ok) {
		br->next = b->open;
		b->open = br;
	}
	pthread_cond_broadcast(&b->gone);
	pthread_mutex_unlock(&b->lock);
	pthread_attr_destroy(&attr);
	if (!ok) {
		close(br->target);
		MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
		free(br);
	}
}

enum MHD_Result console_upgrade(struct console_bridges *b, struct MHD_Connection *c, int target_fd, const char *accept,
				const char *protocol)
{
	struct pending_upgrade *pu = xcalloc(1, sizeof *pu);
	pu->owner = b;
	pu->target = target_fd;
	struct MHD_Response *resp = MHD_create_response_for_upgrade(on_upgraded, pu);
	if (!resp) {
		close(target_fd);
		free(pu);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_UPGRADE, "websocket");
	MHD_add_response_header(resp, "Sec-WebSocket-Accept", accept);
	if (protocol)
		MHD_add_response_header(resp, "Sec-WebSocket-Protocol", protocol);
	pthread_mutex_lock(&b->lock);
	b->starting++;
	pthread_mutex_unlock(&b->lock);
	enum MHD_Result mr = MHD_queue_response(c, MHD_HTTP_SWITCHING_PROTOCOLS, resp);
	MHD_destroy_response(resp);
	if (mr != MHD_YES) {
		pthread_mutex_lock(&b->lock);
		b->starting--;
		pthread_cond_broadcast(&b->gone);
		pthread_mutex_unlock(&b->lock);
		close(target_fd);
		free(pu);
	}
	return mr;
}
