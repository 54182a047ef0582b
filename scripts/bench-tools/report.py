#!/usr/bin/python3
"""report.py TSV MACHINE SIZES READERS OUT_MD OUT_DAT - the table of
scripts/bench: medians of every figure in TSV ("key<TAB>value" per run),
ratios to the limits and to each peer, CPU per GiB, the issue's goals
checked, and the plot's data file for plot.gp."""
import statistics
import sys

tsv, machine, sizes, readers, out_md, out_dat = sys.argv[1:7]
sizes, readers = sizes.split(), readers.split()
big, small = sizes[-1], sizes[0]
MEMORY_CACHE_MIB = 64
GIB_MB = 1073.741824  # 1 GiB in MB

runs = {}
for line in open(tsv):
    key, _, val = line.rstrip("\n").partition("\t")
    try:
        runs.setdefault(key, []).append(float(val))
    except ValueError:
        pass


def med(key):
    v = runs.get(key)
    return statistics.median(v) if v else None


def fmt(v, digits=0):
    if v is None:
        return "-"
    return f"{v:,.{digits}f}".replace(",", " ")


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def rss(key):
    v = runs.get("rss " + key)
    return max(v) if v else None


def lowest(*vals):
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def add(*vals):
    return None if any(v is None for v in vals) else sum(vals)


def cpu_of_speed(mbps):
    # decrypt and decrypt2 run on one thread, CPU-bound: their CPU seconds
    # per GiB are the seconds one GiB takes at their speed.
    return GIB_MB / mbps if mbps else None


def limits(k, f1=False):
    """The limits of the cold rows whose keys start with k."""
    c1, c4 = med(k + "curl1"), med(k + "curl4")
    dl = max(v for v in (c1, c4) if v is not None) if c1 or c4 else None
    sha = med(k + "sha256") if f1 else None
    return {"curl1": c1, "curl4": c4, "download": dl, "decrypt": med(k + "decrypt"),
            "sha256": sha, "memfs": med(f"seq cold {big} memfs"),
            # The goal's limit: the download, for format 1 also SHA-256 on both cores.
            "goal": lowest(dl, sha),
            # The slowest of everything a cold read must do (one-thread decryption too).
            "slower": lowest(dl, med(k + "decrypt"), sha)}


def row(name, az=None, lim=None, rc=None, gc=None, lg=None, rss_mib=None, digits=0,
        slower=True):
    lim = lim or {}
    cells = [name, fmt(az, digits)]
    cells += [fmt(lim.get(x)) for x in ("curl1", "curl4", "download", "decrypt", "sha256",
                                          "memfs")]
    cells += [fmt(rc, digits), fmt(gc, digits), fmt(lg, digits)]
    cells += [ratio(az, lim.get("slower")) if slower else "-", ratio(az, rc), ratio(az, gc),
              ratio(az, lg), fmt(rss_mib, 1)]
    return cells


rows = []
for s in sizes:
    k = f"seq cold {s} "
    lim = limits(k)
    if s != big:
        lim["memfs"] = None
    rows.append(row(f"sequential cold, {s}", med(k + "azaionfs"), lim, rc=med(k + "rclone"),
                    lg=med(k + "legacy"), rss_mib=rss(k + "azaionfs")))
lim2 = limits(f"seq cold {big} ")
rows.append(row(f"sequential cold, {big}, filling cache_dir", med(f"seq fill {big} azaionfs"),
                lim2, rc=med(f"seq cold {big} rclone"), rss_mib=rss(f"seq fill {big} azaionfs")))
k = f"seq cold {big} f1 "
lim1 = limits(k, f1=True)
rows.append(row(f"sequential cold, {big}, format 1", med(k + "azaionfs"), lim1,
                rc=med(f"seq cold {big} rclone"), lg=med(f"seq cold {big} legacy"),
                rss_mib=rss(k + "azaionfs")))
for mode in ("warm", "hot"):
    for s in sizes:
        k = f"seq {mode} {s} "
        rows.append(row(f"sequential {mode}, {s}", med(k + "azaionfs"), rc=med(k + "rclone"),
                        gc=med(k + "gocryptfs"), rss_mib=rss(k + "azaionfs"), slower=False))
    if mode == "warm":
        k = f"seq warm {big} "
        rows.append(row(f"sequential warm, {big}, format 1", med(k + "f1 azaionfs"),
                        rc=med(k + "rclone"), gc=med(k + "gocryptfs"),
                        rss_mib=rss(k + "f1 azaionfs"), slower=False))
k = f"reopen {small} "
rows.append(row(f"reopened {small} file, read whole again and again (first read cold)",
                med(k + "azaionfs"), rc=med(k + "rclone"), gc=med(k + "gocryptfs"),
                rss_mib=rss(k + "azaionfs"), slower=False))
k = f"ttfb cold {big} "
rc, lg = med(k + "rclone"), med(k + "legacy")
rows.append(row(f"first 4 KiB, cold {big} (ms)", med(k + "azaionfs"), rc=rc, lg=lg,
                rss_mib=rss(k + "azaionfs"), digits=1, slower=False))
rows.append(row(f"first 4 KiB, cold {big}, format 1 (ms)", med(f"ttfb cold {big} f1 azaionfs"),
                rc=rc, lg=lg, rss_mib=rss(f"ttfb cold {big} f1 azaionfs"), digits=1,
                slower=False))
for mode in ("cold", "warm"):
    k = f"rand {mode} {big} "
    rows.append(row(f"random 4 KiB, {mode} {big} (reads/s)", med(k + "azaionfs"),
                    rc=med(k + "rclone"), gc=med(k + "gocryptfs"), rss_mib=rss(k + "azaionfs"),
                    slower=False))
for n in readers:
    rows.append(row(f"{n} readers, cold (gocryptfs warm)", med(f"readers {n} cold azaionfs"),
                    rc=med(f"readers {n} cold rclone"), gc=med(f"readers {n} warm gocryptfs"),
                    rss_mib=rss(f"readers {n} cold azaionfs"), slower=False))

head = ["workload (MB/s unless noted; format 2 unless noted)", "azaionfs",
        "limit: curl 1 stream", "limit: curl 4 streams",
        "limit: download (better of 1 and 4 streams)", "limit: decrypt (1 thread)",
        "limit: SHA-256 (2 threads)", "limit: FUSE from memory", "rclone", "gocryptfs", "legacy",
        "÷ slower limit", "÷ rclone", "÷ gocryptfs", "÷ legacy", "azaionfs peak RSS (MiB)"]

# CPU seconds per GiB of the cold reads of the largest model: the worker's
# against curl's and decryption's, and the whole machine's (every process on
# every core, from /proc/stat) against the sum of what the read cannot avoid.
mc_fuse = med(f"machine cpu seq cold {big} memfs")
cpu_rows = []  # name, daemon, curl, decrypt, sha256, bound, direct write (the fill only)
machine_rows = []  # name, read, download, FUSE, decrypt (+ SHA-256 or direct write), sum
for name, key, kl, f1, fill in (
        (f"cold {big}, format 2, no cache_dir", f"seq cold {big} azaionfs", f"seq cold {big} ",
         False, False),
        (f"cold {big}, format 2, filling cache_dir", f"seq fill {big} azaionfs",
         f"seq cold {big} ", False, True),
        (f"cold {big}, format 1", f"seq cold {big} f1 azaionfs", f"seq cold {big} f1 ",
         True, False)):
    daemon, cu = med("cpu " + key), med("cpu " + kl + "curl1")
    de = cpu_of_speed(med(kl + "decrypt"))
    sha = med("cpu " + kl + "sha256") if f1 else None
    dw = med("cpu " + kl + "dwrite") if fill else None
    cpu_rows.append((name, daemon, cu, de, sha, add(cu, de, sha) if f1 else add(cu, de), dw))
    dl = med("machine cpu " + kl + "curl1")
    unavoidable = add(de, sha) if f1 else add(de, dw) if fill else de
    machine_rows.append((name, med("machine cpu " + key), dl, mc_fuse, unavoidable,
                         add(dl, mc_fuse, unavoidable)))

def target(what, ok, figures):
    if ok is None:
        return f"| {what} | not measured | {figures} |"
    return f"| {what} | {'met' if ok else 'NOT met'} | {figures} |"


def both(a, b):
    return a is not None and b is not None


targets = []
for name, key, lim, f1 in ((f"cold {big}, format 2, no cache_dir", f"seq cold {big} azaionfs",
                            lim2, False),
                           (f"cold {big}, format 2, filling cache_dir",
                            f"seq fill {big} azaionfs", lim2, False),
                           (f"cold {big}, format 1", f"seq cold {big} f1 azaionfs", lim1, True)):
    az, goal = med(key), lim["goal"]
    lim_text = (f"download {fmt(lim['download'])} MB/s (1 stream {fmt(lim['curl1'])}, "
                f"4 streams {fmt(lim['curl4'])})")
    if f1:
        lim_text = (f"the slower of {lim_text} and SHA-256 on 2 threads "
                    f"{fmt(lim['sha256'])} MB/s")
    targets.append(target(f"1. {name}: read ≥ 0.9 × its limit",
                          az >= 0.9 * goal if both(az, goal) else None,
                          f"{fmt(az)} MB/s = {ratio(az, goal)} × {fmt(goal)} MB/s; limit: "
                          f"{lim_text}"))
for name, daemon, cu, de, sha, bound, dw in cpu_rows:
    parts = f"curl {fmt(cu, 2)} + decrypt {fmt(de, 2)}" + (f" + SHA-256 {fmt(sha, 2)}"
                                                           if sha is not None else "")
    targets.append(target(f"2. {name}: daemon CPU ≤ 1.3 × (curl + decrypt) per GiB",
                          daemon <= 1.3 * bound if both(daemon, bound) else None,
                          f"worker {fmt(daemon, 2)} s/GiB = {ratio(daemon, bound)} × "
                          f"{fmt(bound, 2)} s/GiB ({parts})"))
    if dw is not None:
        # Not the goal: the same bound with the cost of storing the bytes in it.
        wb = add(bound, dw)
        verdict = ("under" if daemon <= 1.3 * wb else "over") if both(daemon, wb) else "-"
        targets.append(f"| (beside 2.) {name}, storing in the bound: daemon CPU ≤ 1.3 × (curl + "
                       f"decrypt + a direct write of the same bytes) | {verdict} | "
                       f"worker {fmt(daemon, 2)} s/GiB = {ratio(daemon, wb)} × {fmt(wb, 2)} "
                       f"s/GiB ({parts} + direct write {fmt(dw, 2)}) |")
ttfb_az, ttfb_lg = med(f"ttfb cold {big} azaionfs"), med(f"ttfb cold {big} legacy")
targets.append(target(f"3. first 4 KiB of cold {big} ≤ 0.5% of the legacy loader's time",
                      ttfb_az <= 0.005 * ttfb_lg if both(ttfb_az, ttfb_lg) else None,
                      f"{fmt(ttfb_az, 1)} ms = {100 * ttfb_az / ttfb_lg:.2f}% of "
                      f"{fmt(ttfb_lg)} ms" if both(ttfb_az, ttfb_lg) else "-"))
ro_az, ro_gc = med(f"reopen {small} azaionfs"), med(f"reopen {small} gocryptfs")
targets.append(target(f"4. reopened {small} file ≥ 0.5 × gocryptfs",
                      ro_az >= 0.5 * ro_gc if both(ro_az, ro_gc) else None,
                      f"{fmt(ro_az)} MB/s = {ratio(ro_az, ro_gc)} × {fmt(ro_gc)} MB/s"))
r1, rn = med(f"readers {readers[0]} cold azaionfs"), med(f"readers {readers[-1]} cold azaionfs")
targets.append(target(f"5. {readers[-1]} readers together ≥ 0.9 × one",
                      rn >= 0.9 * r1 if both(r1, rn) else None,
                      f"{fmt(rn)} MB/s = {ratio(rn, r1)} × {fmt(r1)} MB/s"))
rss_all = [v for key, vals in runs.items() if key.startswith("rss ") and key.endswith(" azaionfs")
           for v in vals]
rss_max = max(rss_all) if rss_all else None
targets.append(target(f"6. peak RSS ≤ memory_cache + 32 MiB = {MEMORY_CACHE_MIB + 32} MiB",
                      rss_max <= MEMORY_CACHE_MIB + 32 if rss_max is not None else None,
                      f"largest of every run (the serving worker's VmHWM): "
                      f"{fmt(rss_max, 1)} MiB"))
mf = lim2["memfs"]
targets.append(f"| 7. a minimal FUSE read of the same bytes from memory, beside the limits | "
               f"{'measured' if mf is not None else 'not measured'} | "
               f"{fmt(mf)} MB/s = {ratio(mf, lim2['download'])} × the download limit "
               f"{fmt(lim2['download'])} MB/s; azaionfs cold {big} = "
               f"{ratio(med(f'seq cold {big} azaionfs'), mf)} × it |")

with open(out_md, "w") as f:
    f.write("# Benchmark results\n\nWritten by `scripts/bench`; the plot is bench.png.\n\n")
    f.write("| machine | |\n| --- | --- |\n")
    for line in open(machine):
        k2, _, v = line.rstrip("\n").partition("\t")
        f.write(f"| {k2} | {v} |\n")
    f.write("\n| " + " | ".join(head) + " |\n")
    f.write("|" + " --- |" * len(head) + "\n")
    for r in rows:
        f.write("| " + " | ".join(r) + " |\n")
    f.write("\nCPU seconds per GiB read: the serving worker's (utime + stime), curl's (one "
            "stream), decryption's in memory (one thread: 1 GiB ÷ its speed), SHA-256's "
            "(format 1: both threads' CPU); beside the fill, a direct write's of the same "
            "bytes beside cache_dir (one thread, `O_DIRECT`, 1 MiB pieces).\n\n")
    f.write("| cold read | azaionfs worker | curl 1 stream | decrypt | SHA-256 | "
            "curl + decrypt (+ SHA-256) | ÷ (curl + decrypt) | direct write | "
            "÷ (curl + decrypt + direct write) |\n")
    f.write("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for name, daemon, cu, de, sha, bound, dw in cpu_rows:
        f.write(f"| {name} | {fmt(daemon, 2)} | {fmt(cu, 2)} | {fmt(de, 2)} | {fmt(sha, 2)} | "
                f"{fmt(bound, 2)} | {ratio(daemon, bound)} | {fmt(dw, 2)} | "
                f"{ratio(daemon, add(bound, dw)) if dw is not None else '-'} |\n")
    f.write("\nThe whole machine's CPU seconds per GiB (every process on both cores, from "
            "/proc/stat; the stack's nginx included): a cold read against the download "
            "(curl and nginx), FUSE from memory (memfs and its reader) and the decryption "
            "(with format 1's SHA-256, with the fill's direct write) it cannot avoid. Where "
            "both keep the machine as busy, download ÷ read is what the read's throughput "
            "can be, as a share of the download's.\n\n")
    f.write("| cold read | read | download | FUSE from memory | decrypt (+ SHA-256 or write) "
            "| sum | "
            "read ÷ sum | download ÷ read |\n")
    f.write("| --- | --- | --- | --- | --- | --- | --- | --- |\n")
    for name, rd, dl, fu, dec, tot in machine_rows:
        f.write(f"| {name} | {fmt(rd, 2)} | {fmt(dl, 2)} | {fmt(fu, 2)} | {fmt(dec, 2)} | "
                f"{fmt(tot, 2)} | {ratio(rd, tot)} | {ratio(dl, rd)} |\n")
    f.write("\n| goal | | figures |\n| --- | --- | --- |\n")
    f.write("\n".join(targets) + "\n")

# Plot: MB/s of each system per workload; "-" is missing.
series = []
for s in sizes:
    k = f"seq cold {s} "
    lim = limits(k)
    series.append((f"cold {s}", med(k + "azaionfs"), lim["download"], lim["decrypt"],
                   lim["memfs"] if s == big else None, med(k + "rclone"), None,
                   med(k + "legacy")))
for mode in ("warm", "hot"):
    k = f"seq {mode} {big} "
    series.append((f"{mode} {big}", med(k + "azaionfs"), None, None, None, med(k + "rclone"),
                   med(k + "gocryptfs"), None))
n = readers[-1]
series.append((f"{n} readers", med(f"readers {n} cold azaionfs"), None, None, None,
               med(f"readers {n} cold rclone"), med(f"readers {n} warm gocryptfs"), None))
with open(out_dat, "w") as f:
    f.write('workload azaionfs "limit: download" "limit: decrypt" "limit: FUSE from memory" '
            'rclone gocryptfs legacy\n')
    for r in series:
        f.write(f'"{r[0]}" ' + " ".join("-" if v is None else f"{v:.1f}" for v in r[1:]) + "\n")
