/* loop.c - a tiny epoll event loop with one-shot millisecond timers. */
#include "common.h"

#include <string.h>
#include <sys/epoll.h>

struct fd_handler {
	int fd;
	vela_fd_cb cb;
	void *opaque;
	struct fd_handler *next;
};

struct timer {
	uint64_t id;
	int64_t due_ms;
	vela_timer_cb cb;
	void *opaque;
	struct timer *next;
};

struct vela_loop {
	int epfd;
	bool stop;
	uint64_t next_timer_id;
	struct fd_handler *fds;
	struct timer *timers;
};

struct vela_loop *vela_loop_new(void)
{
	struct vela_loop *loop = xcalloc(1, sizeof *loop);
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		vela_error_errno(errno, "epoll_create1");
		free(loop);
		return NULL;
	}
	loop->next_timer_id = 1;
	return loop;
}

void vela_loop_free(struct vela_loop *loop)
{
	if (!loop)
		return;
	while (loop->fds) {
		struct fd_handler *h = loop->fds;
		loop->fds = h->next;
		free(h);
	}
	while (loop->timers) {
		struct timer *t = loop->timers;
		loop->timers = t->next;
		free(t);
	}
	close(loop->epfd);
	free(loop);
}

static struct fd_handler *find_fd(struct vela_loop *loop, int fd)
{
	for (struct fd_handler *h = loop->fds; h; h = h->next)
		if (h->fd == fd)
			return h;
	return NULL;
}

int vela_loop_add_fd(struct vela_loop *loop, int fd, uint32_t events, vela_fd_cb cb, void *opaque)
{
	struct epoll_event ev = { .events = events, .data.fd = fd };
	if (find_fd(loop, fd))
		return vela_error(VELA_E_EXISTS, "vela_loop_add_fd: fd %d already watched", fd);
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return vela_error_errno(errno, "vela_loop_add_fd: epoll_ctl fd %d", fd);
	struct fd_handler *h = xcalloc(1, sizeof *h);
	h->fd = fd;
	h->cb = cb;
	h->opaque = opaque;
	h->next = loop->fds;
	loop->fds = h;
	return 0;
}

int vela_loop_mod_fd(struct vela_loop *loop, int fd, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.fd = fd };
	if (epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev) < 0)
		return vela_error_errno(errno, "vela_loop_mod_fd: epoll_ctl fd %d", fd);
	return 0;
}

void vela_loop_del_fd(struct vela_loop *loop, int fd)
{
	for (struct fd_handler **pp = &loop->fds; *pp; pp = &(*pp)->next) {
		if ((*pp)->fd == fd) {
			struct fd_handler *h = *pp;
			*pp = h->next;
			free(h);
			epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
			return;
		}
	}
}

uint64_t vela_loop_add_timer(struct vela_loop *loop, int64_t ms, vela_timer_cb cb, void *opaque)
{
	struct timer *t = xcalloc(1, sizeof *t);
	t->id = loop->next_timer_id++;
	t->due_ms = time_mono_ms() + (ms < 0 ? 0 : ms);
	t->cb = cb;
	t->opaque = opaque;
	t->next = loop->timers;
	loop->timers = t;
	return t->id;
}

void vela_loop_del_timer(struct vela_loop *loop, uint64_t id)
{
	for (struct timer **pp = &loop->timers; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			struct timer *t = *pp;
			*pp = t->next;
			free(t);
			return;
		}
	}
}

void vela_loop_stop(struct vela_loop *loop)
{
	loop->stop = true;
}

/* Fire the earliest due timer, if any; returns true if one fired. */
static bool fire_one_timer(struct vela_loop *loop)
{
	int64_t now = time_mono_ms();
	struct timer **best = NULL;
	for (struct timer **pp = &loop->timers; *pp; pp = &(*pp)->next)
		if ((*pp)->due_ms <= now && (!best || (*pp)->due_ms < (*best)->due_ms))
			best = pp;
	if (!best)
		return false;
	struct timer *t = *best;
	*best = t->next;
	t->cb(loop, t->id, t->opaque);
	free(t);
	return true;
}

int vela_loop_run(struct vela_loop *loop)
{
	struct epoll_event evs[32];
	loop->stop = false;
	while (!loop->stop) {
		int timeout = -1;
		int64_t now = time_mono_ms();
		for (struct timer *t = loop->timers; t; t = t->next) {
			int64_t d = t->due_ms - now;
			if (d < 0)
				d = 0;
			if (timeout < 0 || d < timeout)
				timeout = d > 60000 ? 60000 : (int)d;
		}
		int n = epoll_wait(loop->epfd, evs, ARRAY_SIZE(evs), timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return vela_error_errno(errno, "vela_loop_run: epoll_wait");
		}
		for (int i = 0; i < n && !loop->stop; i++) {
			/* Look the handler up again: an earlier callback may have removed it. */
			struct fd_handler *h = find_fd(loop, evs[i].data.fd);
			if (h)
				h->cb(loop, h->fd, evs[i].events, h->opaque);
		}
		while (!loop->stop && fire_one_timer(loop))
			;
	}
	return 0;
}
