#!/usr/bin/python3
"""preads PLAIN FILE THREADS COUNT - random preads of FILE from THREADS
threads, COUNT each, compared with the bytes of PLAIN at the same offsets.
Prints "reads mismatches"."""
import os
import random
import sys
import threading

plain = open(sys.argv[1], "rb").read()
fd = os.open(sys.argv[2], os.O_RDONLY)
threads, count = int(sys.argv[3]), int(sys.argv[4])
bad, done = [], [0]
lock = threading.Lock()


def worker(seed):
    r = random.Random(seed)
    for _ in range(count):
        off = r.randrange(len(plain) + 10)
        n = r.choice([1, 15, 16, 17, 4096, 65536, 65537, r.randrange(1, 300000)])
        try:
            got = os.pread(fd, n, off)
        except OSError as e:
            got = e
        with lock:
            done[0] += 1
            if got != plain[off:off + n]:
                bad.append((off, n, got if isinstance(got, OSError) else len(got)))


ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
for b in bad[:5]:
    print("mismatch at %d+%d: %s" % b, file=sys.stderr)
print(done[0], len(bad))
