/*
 * vela-io - a small I/O load generator for the test guest (the busybox
 * initramfs has no fio): THREADS threads each keep one O_DIRECT request in
 * flight, so THREADS is the queue depth the disk sees.
 *
 *   vela-io DEVICE read|write|randread|randwrite BS SECONDS THREADS [SPAN]
 *
 * Prints one line: VELA-IO <pattern> bs=<BS> qd=<THREADS> ops=<n> iops=<n> mbps=<n>
 * Built static by build-guest.sh; runs on the host too (tests, benches).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

struct job {
	int fd;
	int write, random;
	size_t bs;
	uint64_t span_blocks, next;
	double stop_at;
	unsigned seed;
	uint64_t ops;
	int failed;
	pthread_t t;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void *run(void *arg)
{
	struct job *j = arg;
	void *buf;
	if (posix_memalign(&buf, 4096, j->bs)) {
		j->failed = ENOMEM;
		return NULL;
	}
	memset(buf, 0x5a, j->bs);
	while (now() < j->stop_at) {
		for (int k = 0; k < 16; k++) {   /* check the clock every 16 requests */
			uint64_t blk = j->random ? (uint64_t)rand_r(&j->seed) * 65536u % j->span_blocks
						 : j->next++ % j->span_blocks;
			off_t off = (off_t)(blk * j->bs);
			ssize_t n = j->write ? pwrite(j->fd, buf, j->bs, off) : pread(j->fd, buf, j->bs, off);
			if (n != (ssize_t)j->bs) {
				j->failed = n < 0 ? errno : EIO;
				free(buf);
				return NULL;
			}
			j->ops++;
		}
	}
	free(buf);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: vela-io DEVICE read|write|randread|randwrite BS SECONDS THREADS [SPAN-BYTES]\n");
		return 2;
	}
	const char *dev = argv[1], *pat = argv[2];
	size_t bs = strtoul(argv[3], NULL, 0);
	double secs = atof(argv[4]);
	int threads = atoi(argv[5]);
	int write = strstr(pat, "write") != NULL, random = strncmp(pat, "rand", 4) == 0;
	if (bs == 0 || bs % 512 || secs <= 0 || threads < 1 || threads > 256) {
		fprintf(stderr, "vela-io: bad arguments\n");
		return 2;
	}
	int fd = open(dev, (write ? O_RDWR : O_RDONLY) | O_DIRECT);
	if (fd < 0) {
		fprintf(stderr, "vela-io: %s: %s\n", dev, strerror(errno));
		return 1;
	}
	uint64_t size = 0;
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISBLK(st.st_mode))
		ioctl(fd, BLKGETSIZE64, &size);
	else
		size = (uint64_t)st.st_size;
	if (argc > 6 && strtoull(argv[6], NULL, 0) < size)
		size = strtoull(argv[6], NULL, 0);
	if (size < bs) {
		fprintf(stderr, "vela-io: %s is smaller than one request\n", dev);
		return 1;
	}
	struct job *jobs = calloc((size_t)threads, sizeof(*jobs));
	double start = now();
	for (int i = 0; i < threads; i++) {
		jobs[i] = (struct job){ .fd = fd, .write = write, .random = random, .bs = bs,
					.span_blocks = size / bs, .next = (size / bs) * (uint64_t)i / (uint64_t)threads,
					.stop_at = start + secs, .seed = 12345u + (unsigned)i };
		pthread_create(&jobs[i].t, NULL, run, &jobs[i]);
	}
	uint64_t ops = 0;
	int failed = 0;
	for (int i = 0; i < threads; i++) {
		pthread_join(jobs[i].t, NULL);
		ops += jobs[i].ops;
		if (jobs[i].failed)
			failed = jobs[i].failed;
	}
	double el = now() - start;
	if (failed) {
		fprintf(stderr, "vela-io: %s: %s\n", dev, strerror(failed));
		return 1;
	}
	printf("VELA-IO %s bs=%zu qd=%d ops=%llu iops=%.0f mbps=%.1f\n", pat, bs, threads, (unsigned long long)ops,
	       (double)ops / el, (double)ops * (double)bs / el / 1e6);
	return 0;
}
