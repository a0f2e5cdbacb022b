/* error.c - the error-code table and thread-local error messages. */
#include "common.h"

#include <string.h>

const struct vela_errinfo vela_error_table[] = {
#define VELA_ERRDEF(name, num, eno, msg) { (num), "VELA_E_" #name, #eno, (eno), (msg) },
#include "errors.def"
#undef VELA_ERRDEF
	{ 0, NULL, NULL, 0, NULL },
};

#define ERRMSG_MAX 1024
static _Thread_local char errmsg[ERRMSG_MAX];

const struct vela_errinfo *vela_errinfo(int code)
{
	if (code < 0)
		code = -code;
	for (const struct vela_errinfo *e = vela_error_table; e->name; e++)
		if (e->code == code)
			return e;
	return NULL;
}

const char *vela_errname(int code)
{
	const struct vela_errinfo *e = vela_errinfo(code);
	return e ? e->name : "VELA_E_UNKNOWN";
}

static int normalize(int code)
{
	if (code < 0)
		code = -code;
	if (code == 0 || !vela_errinfo(code))
		code = VELA_E_INTERNAL;
	return -code;
}

int vela_error(int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof errmsg, fmt, ap);
	va_end(ap);
	return normalize(code);
}

int vela_error_context(int code, const char *fmt, ...)
{
	char prefix[ERRMSG_MAX], old[ERRMSG_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, errmsg, sizeof old);
	if (old[0])
		snprintf(errmsg, sizeof errmsg, "%s: %s", prefix, old);
	else
		snprintf(errmsg, sizeof errmsg, "%s: %s", prefix, vela_errinfo(code) ? vela_errinfo(code)->message : "error");
	return code < 0 ? code : normalize(code);
}

int vela_code_from_errno(int e)
{
	switch (e) {
	case ENOENT: return VELA_E_NOTFOUND;
	case EEXIST: return VELA_E_EXISTS;
	case EBUSY: return VELA_E_BUSY;
	case ENOMEM: return VELA_E_NOMEM;
	case EAGAIN: return VELA_E_NORES;
	case EACCES: case EPERM: return VELA_E_PERM;
	case ENOTSUP: return VELA_E_NOTSUP;
	case ETIMEDOUT: return VELA_E_TIMEOUT;
	case EROFS: return VELA_E_READONLY;
	case ENOLCK: return VELA_E_LOCKED;
	case ENOSPC: return VELA_E_DISKFULL;
	case EDQUOT: return VELA_E_QUOTA;
	case ECONNREFUSED: return VELA_E_CONNREFUSED;
	case ECONNRESET: case EPIPE: return VELA_E_CONNRESET;
	case ENOTCONN: return VELA_E_NOTCONN;
	case EINPROGRESS: return VELA_E_INPROGRESS;
	case EFBIG: return VELA_E_TOOBIG;
	case ERANGE: return VELA_E_RANGE;
	case EOVERFLOW: return VELA_E_OVERFLOW;
	case ELOOP: return VELA_E_LOOP;
	case ENOTEMPTY: return VELA_E_NOTEMPTY;
	case ENAMETOOLONG: case EINVAL: return VELA_E_INVAL;
	case ECHILD: return VELA_E_CHILD;
	case ESRCH: return VELA_E_NOTRUNNING;
	case ECANCELED: return VELA_E_CANCELED;
	case EHOSTUNREACH: return VELA_E_UNREACHABLE;
	case ENETDOWN: case ENETUNREACH: return VELA_E_NETWORK;
	case EIO: return VELA_E_IO;
	default: return VELA_E_SYSTEM;
	}
}

int vela_error_errno(int e, const char *fmt, ...)
{
	char ctx[ERRMSG_MAX];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx, sizeof ctx, fmt, ap);
	va_end(ap);
	snprintf(errmsg, sizeof errmsg, "%s: %s", ctx, strerror(e));
	return -vela_code_from_errno(e);
}

const char *vela_errmsg(void)
{
	return errmsg;
}

void vela_error_clear(void)
{
	errmsg[0] = '\0';
}
