/*
 * metrics.c - build info, process metrics, latency histograms and the
 * source layers' counters (see metrics.h).
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs/metrics.h"

/* Seconds; from a page-cache-warm disk read to a CDN that retries. */
static const double metrics_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
					0.25,	0.5,   1,      2.5,   5,    10,	   30};
#define METRICS_N_BOUNDS (sizeof(metrics_bounds) / sizeof(metrics_bounds[0]))

struct metrics_hist_data {
	uint64_t bucket[METRICS_N_BOUNDS]; /* not cumulative; summed when written */
	uint64_t count;
	uint64_t sum_ns;
};

static struct metrics_hist_data metrics_hists[METRICS_N_HIST];
static uint64_t metrics_counters[METRICS_N_COUNTERS];
static const char *metrics_version = "unknown";

static const struct {
	const char *name, *help;
} metrics_hist_names[METRICS_N_HIST] = {
	[METRICS_CDN_READ] = {"cdn_read_seconds", "CDN range requests, retries included"},
	[METRICS_API_CALL] = {"api_call_seconds",
			      "resource API calls, a login they needed included"},
	[METRICS_FUSE_READ] = {"fuse_read_seconds", "reads of the mount"},
};

static const struct {
	const char *name, *help;
} metrics_counter_names[METRICS_N_COUNTERS] = {
	[METRICS_CDN_FETCHES] = {"cdn_fetches_total", "ciphertext range reads sent to the CDN"},
	[METRICS_CDN_BYTES] = {"cdn_fetch_bytes_total", "ciphertext bytes the CDN sent"},
	[METRICS_CDN_ERRORS] = {"cdn_fetch_errors_total", "CDN range reads that failed"},
	[METRICS_DISK_HITS] = {"disk_cache_hits_total",
			       "ciphertext range reads answered from cache_dir"},
	[METRICS_DISK_BYTES] = {"disk_cache_hit_bytes_total",
				"ciphertext bytes read from cache_dir"},
	[METRICS_API_ERRORS] = {"api_call_errors_total", "resource API calls that failed"},
};

void metrics_set_version(const char *version)
{
	metrics_version = version;
}

uint64_t metrics_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void metrics_observe(enum metrics_hist h, uint64_t start)
{
	uint64_t ns = metrics_now() - start;
	double s = (double)ns / 1e9;
	size_t i;

	for (i = 0; i < METRICS_N_BOUNDS && s > metrics_bounds[i]; i++)
		;
	if (i < METRICS_N_BOUNDS)
		__atomic_add_fetch(&metrics_hists[h].bucket[i], 1, __ATOMIC_RELAXED);
	__atomic_add_fetch(&metrics_hists[h].sum_ns, ns, __ATOMIC_RELAXED);
	__atomic_add_fetch(&metrics_hists[h].count, 1, __ATOMIC_RELAXED);
}

void metrics_count(enum metrics_counter c, uint64_t n)
{
	__atomic_add_fetch(&metrics_counters[c], n, __ATOMIC_RELAXED);
}

/* The value of "Key:  N kB" in /proc/self/status, in bytes; -1 when absent. */
static long long metrics_status_kb(const char *text, const char *key)
{
	const char *p = strstr(text, key);

	return p ? strtoll(p + strlen(key), NULL, 10) * 1024 : -1;
}

static void metrics_gauge(FILE *m, const char *name, const char *type, const char *help, double v)
{
	fprintf(m, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

/* The process_* families client libraries export, from /proc/self. */
static void metrics_process(FILE *m)
{
	char status[8192], stat[1024], *p;
	long tick = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	unsigned long long utime, stime, start, vsize;
	long long rss;
	size_t n;
	FILE *f;
	DIR *d;
	long fds = -1;

	status[0] = stat[0] = '\0';
	if ((f = fopen("/proc/self/status", "re"))) {
		n = fread(status, 1, sizeof(status) - 1, f);
		status[n] = '\0';
		fclose(f);
	}
	if ((f = fopen("/proc/self/stat", "re"))) {
		n = fread(stat, 1, sizeof(stat) - 1, f);
		stat[n] = '\0';
		fclose(f);
	}
	if ((d = opendir("/proc/self/fd"))) {
		struct dirent *de;
		long count = 0;

		while ((de = readdir(d)))
			count += de->d_name[0] != '.';
		closedir(d);
		fds = count - 1; /* less the one opendir held */
	}
	/* Fields after the command's ")" (which may hold spaces): see proc(5). */
	p = strrchr(stat, ')');
	if (p &&
	    sscanf(p + 2,
		   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d %*d %*d "
		   "%*d %llu %llu %lld",
		   &utime, &stime, &start, &vsize, &rss) == 5 &&
	    tick > 0) {
		struct timespec now, up;
		double boot;

		/* start is in ticks since boot: the epoch time of boot from two clocks. */
		clock_gettime(CLOCK_REALTIME, &now);
		clock_gettime(CLOCK_BOOTTIME, &up);
		boot = (double)now.tv_sec + now.tv_nsec / 1e9 - (double)up.tv_sec -
		       up.tv_nsec / 1e9;
		metrics_gauge(m, "process_cpu_seconds_total", "counter",
			      "user and system CPU time spent, in seconds",
			      (double)(utime + stime) / (double)tick);
		metrics_gauge(m, "process_start_time_seconds", "gauge",
			      "start time of the process since the epoch, in seconds",
			      (double)(long long)(boot + (double)start / (double)tick));
		metrics_gauge(m, "process_virtual_memory_bytes", "gauge",
			      "virtual memory size in bytes", (double)vsize);
		metrics_gauge(m, "process_resident_memory_bytes", "gauge",
			      "resident memory size in bytes", (double)rss * (double)page);
	}
	if (metrics_status_kb(status, "VmLck:") >= 0)
		metrics_gauge(m, "process_locked_memory_bytes", "gauge",
			      "locked memory (mlock: keys and plaintext) in bytes",
			      (double)metrics_status_kb(status, "VmLck:"));
	if (fds >= 0)
		metrics_gauge(m, "process_open_fds", "gauge", "open file descriptors", (double)fds);
	n = (size_t)sysconf(_SC_OPEN_MAX);
	metrics_gauge(m, "process_max_fds", "gauge", "the limit of open file descriptors",
		      (double)n);
}

void metrics_write(FILE *m)
{
	fprintf(m,
		"# HELP azaionfs_build_info The running build, always 1\n"
		"# TYPE azaionfs_build_info gauge\n"
		"azaionfs_build_info{version=\"%s\"} 1\n",
		metrics_version);
	metrics_process(m);
	for (int c = 0; c < METRICS_N_COUNTERS; c++)
		fprintf(m, "# HELP azaionfs_%s %s\n# TYPE azaionfs_%s counter\nazaionfs_%s %llu\n",
			metrics_counter_names[c].name, metrics_counter_names[c].help,
			metrics_counter_names[c].name, metrics_counter_names[c].name,
			(unsigned long long)__atomic_load_n(&metrics_counters[c],
							    __ATOMIC_RELAXED));
	for (int h = 0; h < METRICS_N_HIST; h++) {
		const char *name = metrics_hist_names[h].name;
		struct metrics_hist_data *d = &metrics_hists[h];
		uint64_t cum = 0, count = __atomic_load_n(&d->count, __ATOMIC_RELAXED);

		fprintf(m, "# HELP azaionfs_%s %s\n# TYPE azaionfs_%s histogram\n", name,
			metrics_hist_names[h].help, name);
		for (size_t i = 0; i < METRICS_N_BOUNDS; i++) {
			cum += __atomic_load_n(&d->bucket[i], __ATOMIC_RELAXED);
			/* Updated one by one: no bucket may exceed +Inf. */
			if (cum > count)
				count = cum;
			fprintf(m, "azaionfs_%s_bucket{le=\"%g\"} %llu\n", name, metrics_bounds[i],
				(unsigned long long)cum);
		}
		fprintf(m, "azaionfs_%s_bucket{le=\"+Inf\"} %llu\n", name,
			(unsigned long long)count);
		fprintf(m, "azaionfs_%s_sum %.9f\n", name,
			(double)__atomic_load_n(&d->sum_ns, __ATOMIC_RELAXED) / 1e9);
		fprintf(m, "azaionfs_%s_count %llu\n", name, (unsigned long long)count);
	}
}
