/*
 * metrics.h - what /metrics shows besides the store's and the side
 * endpoint's own counters: build info, the process (memory, locked memory,
 * open files, CPU time, start time), latency histograms of CDN range reads,
 * API calls and FUSE reads, and the fetches each source layer answered.
 *
 * Process-wide: the layers that count (src_cdn, src_disk, session, ops)
 * know nothing of each other or of the side endpoint, and there is one
 * daemon per process. Every update is one atomic add; no lock.
 */
#ifndef AZAION_METRICS_H
#define AZAION_METRICS_H

#include <stdint.h>
#include <stdio.h>

enum metrics_hist {
	METRICS_CDN_READ,  /* one range request to the CDN, with its retries */
	METRICS_API_CALL,  /* one resource API call, with a login it needed */
	METRICS_FUSE_READ, /* one read of the mount */
	METRICS_N_HIST,
};

enum metrics_counter {
	METRICS_CDN_FETCHES, /* range reads the CDN answered (or failed) */
	METRICS_CDN_BYTES,
	METRICS_CDN_ERRORS,
	METRICS_DISK_HITS, /* range reads cache_dir answered */
	METRICS_DISK_BYTES,
	METRICS_API_ERRORS,
	METRICS_N_COUNTERS,
};

/* The version shown by azaionfs_build_info (a static string). */
void metrics_set_version(const char *version);
/* Now, for metrics_observe: nanoseconds of CLOCK_MONOTONIC. */
uint64_t metrics_now(void);
/* Counts one event of h that began at start (metrics_now). */
void metrics_observe(enum metrics_hist h, uint64_t start);
void metrics_count(enum metrics_counter c, uint64_t n);
/* Writes the families above in the Prometheus text format. */
void metrics_write(FILE *m);

#endif
