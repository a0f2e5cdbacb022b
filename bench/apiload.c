/*
 * apiload - measure "list every VM with its state" through an API, the same
 * way for both peers:
 *   apiload velad SOCKET THREADS SECONDS     GET /api/v1/vms over velad's socket
 *   apiload velad-https URL THREADS SECONDS  the same over HTTPS as $VELA_TOKEN's
 *                                            user (a filtered list: no cache)
 *   apiload libvirt URI THREADS SECONDS      virConnectListAllDomains + name + state
 * Each thread keeps its own connection and lists in a loop; prints requests,
 * requests/s, p50 and p99 latency (ms) and the number of VMs in the last list.
 * Built and run by bench/velad-api.sh.
 */
#include <curl/curl.h>
#include <libvirt/libvirt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *kind, *target;
static double seconds;
static double *lat;            /* every latency, all threads */
static size_t n_lat, cap_lat;
static long last_count;
static int errors;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

struct buf {
	char *p;
	size_t n;
};

static size_t sink(char *p, size_t size, size_t n, void *arg)
{
	struct buf *b = arg;
	b->p = realloc(b->p, b->n + size * n + 1);
	memcpy(b->p + b->n, p, size * n);
	b->n += size * n;
	b->p[b->n] = '\0';
	return size * n;
}

static void record(double ms, long count, int err)
{
	pthread_mutex_lock(&lock);
	if (n_lat == cap_lat) {
		cap_lat = cap_lat ? 2 * cap_lat : 4096;
		lat = realloc(lat, cap_lat * sizeof *lat);
	}
	lat[n_lat++] = ms;
	if (count >= 0)
		last_count = count;
	errors += err;
	pthread_mutex_unlock(&lock);
}

static void *velad_worker(void *arg)
{
	(void)arg;
	CURL *c = curl_easy_init();
	struct buf b = { 0 };
	struct curl_slist *h = NULL;
	char url[512], auth[512];
	if (strcmp(kind, "velad-https") == 0) {
		snprintf(url, sizeof url, "%s/api/v1/vms", target);
		snprintf(auth, sizeof auth, "Authorization: Bearer %s", getenv("VELA_TOKEN") ? getenv("VELA_TOKEN") : "");
		h = curl_slist_append(h, auth);
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	} else {
		snprintf(url, sizeof url, "http://velad/api/v1/vms");
		curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, target);
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, sink);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	double end = now() + seconds;
	while (now() < end) {
		b.n = 0;
		double t0 = now();
		CURLcode rc = curl_easy_perform(c);
		double ms = (now() - t0) * 1000;
		long count = -1;
		if (rc == CURLE_OK && b.p) {
			/* Count the VMs: one "config" member each. */
			count = 0;
			for (char *p = b.p; (p = strstr(p, "\"config\"")); p++)
				count++;
		}
		record(ms, count, rc != CURLE_OK);
	}
	free(b.p);
	curl_slist_free_all(h);
	curl_easy_cleanup(c);
	return NULL;
}

static void *libvirt_worker(void *arg)
{
	(void)arg;
	virConnectPtr conn = virConnectOpen(target);
	if (!conn) {
		record(0, -1, 1);
		return NULL;
	}
	double end = now() + seconds;
	while (now() < end) {
		double t0 = now();
		virDomainPtr *doms = NULL;
		int n = virConnectListAllDomains(conn, &doms, 0);
		for (int i = 0; i < n; i++) {
			int state, reason;
			volatile const char *name = virDomainGetName(doms[i]);
			(void)name;
			virDomainGetState(doms[i], &state, &reason, 0);
			virDomainFree(doms[i]);
		}
		free(doms);
		record((now() - t0) * 1000, n, n < 0);
	}
	virConnectClose(conn);
	return NULL;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: apiload velad|velad-https|libvirt SOCKET|URL|URI THREADS SECONDS\n");
		return 2;
	}
	kind = argv[1];
	target = argv[2];
	int threads = atoi(argv[3]);
	seconds = atof(argv[4]);
	if (threads < 1 || threads > 256 || seconds <= 0 || seconds > 600)
		return 2;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_t t[256];
	double t0 = now();
	for (int i = 0; i < threads; i++)
		pthread_create(&t[i], NULL, strcmp(kind, "libvirt") == 0 ? libvirt_worker : velad_worker, NULL);
	for (int i = 0; i < threads; i++)
		pthread_join(t[i], NULL);
	double wall = now() - t0;
	qsort(lat, n_lat, sizeof *lat, cmp);
	double p50 = n_lat ? lat[n_lat / 2] : 0, p99 = n_lat ? lat[(size_t)(n_lat * 0.99)] : 0;
	printf("%s requests=%zu rps=%.1f p50_ms=%.2f p99_ms=%.2f vms=%ld errors=%d\n", kind, n_lat, n_lat / wall, p50, p99,
	       last_count, errors);
	return errors ? 1 : 0;
}
