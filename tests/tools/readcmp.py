#!/usr/bin/python3
"""readcmp PLAIN FILE OFF LEN - one pread of LEN bytes at OFF of FILE (freshly
opened), compared with PLAIN's bytes there. Prints "ok SECONDS", "mismatch
SECONDS" or "ERRNO-NAME SECONDS" (e.g. "EIO 4.02"); a short read past the
plaintext's end is a mismatch."""
import errno
import os
import sys
import time

plain, path, off, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with open(plain, "rb") as f:
    f.seek(off)
    want = f.read(n)
t0 = time.monotonic()
try:
    fd = os.open(path, os.O_RDONLY)
    try:
        got = os.pread(fd, n, off)
    finally:
        os.close(fd)
    res = "ok" if got == want else "mismatch"
except OSError as e:
    res = errno.errorcode.get(e.errno, str(e.errno))
print("%s %.2f" % (res, time.monotonic() - t0))
