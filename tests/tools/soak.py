#!/usr/bin/python3
"""soak PID SECONDS READERS PLAIN_DIR MOUNT NAME... - READERS threads do
random preads over every NAME under MOUNT for SECONDS, each compared with
the same bytes of PLAIN_DIR/NAME, while the page cache of the files is
dropped now and then (so reads reach the daemon) and the daemon's RSS
(process PID) is sampled every 5 s. Prints a JSON summary on stdout."""
import json
import os
import random
import sys
import threading
import time

pid, seconds, readers = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
plain_dir, mnt, names = sys.argv[4], sys.argv[5], sys.argv[6:]
plain = {n: open(os.path.join(plain_dir, n), "rb").read() for n in names}
lock = threading.Lock()
tot = {"reads": 0, "bytes": 0, "wrong_reads": 0, "wrong_bytes": 0, "errors": 0}
first_errors = []
stop = time.monotonic() + seconds


def rss_kib():
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def reader(seed):
    r = random.Random(seed)
    fds = {}
    n_reads = 0
    while time.monotonic() < stop:
        name = r.choice(names)
        data = plain[name]
        if name not in fds or r.random() < 0.01:
            if name in fds:
                os.close(fds.pop(name))
            fds[name] = os.open(os.path.join(mnt, name), os.O_RDONLY)
        fd = fds[name]
        size = len(data)
        off = r.randrange(size + 1) if r.random() < 0.9 else r.randrange(size + 70000)
        n = r.choice([1, 16, 4095, 4096, 65536, 65537, 131072, r.randrange(1, 1 << 20)])
        try:
            got = os.pread(fd, n, off)
            want = data[off:off + n]
            wrong = 0
            if got != want:
                wrong = sum(1 for a, b in zip(got, want) if a != b) + abs(len(got) - len(want))
            with lock:
                tot["reads"] += 1
                tot["bytes"] += len(got)
                if wrong:
                    tot["wrong_reads"] += 1
                    tot["wrong_bytes"] += wrong
                    if len(first_errors) < 5:
                        first_errors.append("%s@%d+%d: %d wrong bytes" % (name, off, n, wrong))
        except OSError as e:
            with lock:
                tot["reads"] += 1
                tot["errors"] += 1
                if len(first_errors) < 5:
                    first_errors.append("%s@%d+%d: %s" % (name, off, n, e))
        n_reads += 1
        if n_reads % 50 == 0:
            # The kernel's page cache would answer most reads: drop it.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    for fd in fds.values():
        os.close(fd)


samples = []
t0 = time.monotonic()
ts = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
for t in ts:
    t.start()
while time.monotonic() < stop:
    samples.append((round(time.monotonic() - t0), rss_kib()))
    time.sleep(min(5.0, max(0.0, stop - time.monotonic())))
for t in ts:
    t.join()
samples.append((round(time.monotonic() - t0), rss_kib()))
# RSS after the first fifth (caches filled) against the end.
warm = [s for s in samples if s[0] >= seconds / 5] or samples
out = dict(tot)
out.update({
    "seconds": round(time.monotonic() - t0, 1),
    "readers": readers,
    "models": len(names),
    "model_bytes": sum(len(d) for d in plain.values()),
    "rss_first_kib": samples[0][1],
    "rss_warm_kib": warm[0][1],
    "rss_last_kib": samples[-1][1],
    "rss_max_kib": max(s[1] for s in samples),
    "rss_samples": samples,
    "first_errors": first_errors,
})
print(json.dumps(out))
