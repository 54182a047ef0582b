#!/usr/bin/python3
"""report.py TSV MACHINE SIZES READERS OUT_MD OUT_DAT - the table of
scripts/bench: medians of every figure in TSV ("key<TAB>value" per run),
ratios to the limits and to each peer, the issue's targets checked, and
the plot's data file for plot.gp."""
import statistics
import sys

tsv, machine, sizes, readers, out_md, out_dat = sys.argv[1:7]
sizes, readers = sizes.split(), readers.split()
big = sizes[-1]
MEMORY_CACHE_MIB = 64

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


rows = []  # workload, az, curl, decrypt, rclone, gocryptfs, legacy, r_limit, r_rc, r_gc, r_lg, rss
for s in sizes:
    k = f"seq cold {s} "
    az, cu, de = med(k + "azaionfs"), med(k + "curl"), med(k + "decrypt")
    rc, lg = med(k + "rclone"), med(k + "legacy")
    lim = min(x for x in (cu, de) if x is not None) if cu or de else None
    rows.append([f"sequential cold, {s}", fmt(az), fmt(cu), fmt(de), fmt(rc), "-", fmt(lg),
                 ratio(az, lim), ratio(az, rc), "-", ratio(az, lg), fmt(rss(k + "azaionfs"), 1)])
az = med(f"seq fill {big} azaionfs")
rows.append([f"sequential cold, {big}, filling cache_dir", fmt(az), "-", "-", "-", "-", "-",
             ratio(az, lim), ratio(az, med(f"seq cold {big} rclone")), "-", "-", "-"])
k = f"seq cold {big} f1 "
az, cu, de, lg = med(k + "azaionfs"), med(k + "curl"), med(k + "decrypt"), med(f"seq cold {big} legacy")
lims = [x for x in (cu, de) if x is not None]
rows.append([f"sequential cold, {big}, format 1", fmt(az), fmt(cu), fmt(de), "-", "-", fmt(lg),
             ratio(az, min(lims) if lims else None), ratio(az, med(f"seq cold {big} rclone")), "-",
             ratio(az, lg), fmt(rss(k + "azaionfs"), 1)])
for mode in ("warm", "hot"):
    for s in sizes:
        k = f"seq {mode} {s} "
        az, rc, gc = med(k + "azaionfs"), med(k + "rclone"), med(k + "gocryptfs")
        rows.append([f"sequential {mode}, {s}", fmt(az), "-", "-", fmt(rc), fmt(gc), "-",
                     "-", ratio(az, rc), ratio(az, gc), "-", fmt(rss(k + "azaionfs"), 1)])
    if mode == "warm":
        k = f"seq warm {big} "
        az = med(k + "f1 azaionfs")
        rows.append([f"sequential warm, {big}, format 1", fmt(az), "-", "-", fmt(med(k + "rclone")),
                     fmt(med(k + "gocryptfs")), "-", "-", ratio(az, med(k + "rclone")),
                     ratio(az, med(k + "gocryptfs")), "-", fmt(rss(k + "f1 azaionfs"), 1)])
k = f"ttfb cold {big} "
az, rc, lg = med(k + "azaionfs"), med(k + "rclone"), med(k + "legacy")
rows.append([f"first 4 KiB, cold {big} (ms)", fmt(az, 1), "-", "-", fmt(rc, 1), "-", fmt(lg, 1),
             "-", ratio(az, rc), "-", ratio(az, lg), fmt(rss(k + "azaionfs"), 1)])
az1 = med(f"ttfb cold {big} f1 azaionfs")
rows.append([f"first 4 KiB, cold {big}, format 1 (ms)", fmt(az1, 1), "-", "-", fmt(rc, 1), "-",
             fmt(lg, 1), "-", ratio(az1, rc), "-", ratio(az1, lg),
             fmt(rss(f"ttfb cold {big} f1 azaionfs"), 1)])
for mode in ("cold", "warm"):
    k = f"rand {mode} {big} "
    az, rc, gc = med(k + "azaionfs"), med(k + "rclone"), med(k + "gocryptfs")
    rows.append([f"random 4 KiB, {mode} {big} (reads/s)", fmt(az), "-", "-", fmt(rc), fmt(gc),
                 "-", "-", ratio(az, rc), ratio(az, gc), "-", fmt(rss(k + "azaionfs"), 1)])
for n in readers:
    az, rc = med(f"readers {n} cold azaionfs"), med(f"readers {n} cold rclone")
    gc = med(f"readers {n} warm gocryptfs")
    rows.append([f"{n} readers, cold (gocryptfs warm)", fmt(az), "-", "-", fmt(rc), fmt(gc), "-",
                 "-", ratio(az, rc), ratio(az, gc), "-",
                 fmt(rss(f"readers {n} cold azaionfs"), 1)])

head = ["workload (MB/s unless noted; format 2 unless noted)", "azaionfs", "limit: curl", "limit: decrypt", "rclone",
        "gocryptfs", "legacy", "÷ slower limit", "÷ rclone", "÷ gocryptfs", "÷ legacy",
        "azaionfs peak RSS (MiB)"]

# The targets of the issue.
k = f"seq cold {big} "
az_cold, rc_cold = med(k + "azaionfs"), med(k + "rclone")
lims = [x for x in (med(k + "curl"), med(k + "decrypt")) if x is not None]
lim = min(lims) if lims else None
ttfb_az, ttfb_lg = med(f"ttfb cold {big} azaionfs"), med(f"ttfb cold {big} legacy")
warm_az, warm_gc = med(f"seq warm {big} azaionfs"), med(f"seq warm {big} gocryptfs")
r1, rn = med(f"readers {readers[0]} cold azaionfs"), med(f"readers {readers[-1]} cold azaionfs")
rss_all = [v for key, vals in runs.items() if key.startswith("rss ") and key.endswith(" azaionfs")
           for v in vals]
rss_max = max(rss_all) if rss_all else None


def target(what, ok, figures):
    if ok is None:
        return f"| {what} | not measured | {figures} |"
    return f"| {what} | {'met' if ok else 'NOT met'} | {figures} |"


def both(a, b):
    return a is not None and b is not None


targets = [
    target(f"cold {big} read ≥ 80% of the slower limit",
           az_cold >= 0.8 * lim if both(az_cold, lim) else None,
           f"{fmt(az_cold)} MB/s = {ratio(az_cold, lim)} × {fmt(lim)} MB/s"),
    target(f"cold {big} read ≥ 1.5 × rclone mount",
           az_cold >= 1.5 * rc_cold if both(az_cold, rc_cold) else None,
           f"{fmt(az_cold)} MB/s = {ratio(az_cold, rc_cold)} × {fmt(rc_cold)} MB/s"),
    target(f"first byte of cold {big} < 1% of legacy",
           ttfb_az < 0.01 * ttfb_lg if both(ttfb_az, ttfb_lg) else None,
           f"{fmt(ttfb_az, 1)} ms = {100 * ttfb_az / ttfb_lg:.2f}% of {fmt(ttfb_lg)} ms"
           if both(ttfb_az, ttfb_lg) else "-"),
    target(f"warm {big} read ≥ gocryptfs",
           warm_az >= warm_gc if both(warm_az, warm_gc) else None,
           f"{fmt(warm_az)} MB/s = {ratio(warm_az, warm_gc)} × {fmt(warm_gc)} MB/s"),
    target(f"{readers[-1]} readers together ≥ 80% of one",
           rn >= 0.8 * r1 if both(r1, rn) else None,
           f"{fmt(rn)} MB/s = {ratio(rn, r1)} × {fmt(r1)} MB/s"),
    target(f"peak RSS < memory_cache + 32 MiB = {MEMORY_CACHE_MIB + 32} MiB",
           rss_max < MEMORY_CACHE_MIB + 32 if rss_max is not None else None,
           f"largest of every run: {fmt(rss_max, 1)} MiB"),
]

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
    f.write("\n| target | | figures |\n| --- | --- | --- |\n")
    f.write("\n".join(targets) + "\n")

# Plot: MB/s of each system per workload; "-" is missing.
series = []
for s in sizes:
    k = f"seq cold {s} "
    series.append((f"cold {s}", med(k + "azaionfs"), med(k + "curl"), med(k + "decrypt"),
                   med(k + "rclone"), None, med(k + "legacy")))
for mode in ("warm", "hot"):
    k = f"seq {mode} {big} "
    series.append((f"{mode} {big}", med(k + "azaionfs"), None, None, med(k + "rclone"),
                   med(k + "gocryptfs"), None))
n = readers[-1]
series.append((f"{n} readers", med(f"readers {n} cold azaionfs"), None, None,
               med(f"readers {n} cold rclone"), med(f"readers {n} warm gocryptfs"), None))
with open(out_dat, "w") as f:
    f.write('workload azaionfs "limit: curl" "limit: decrypt" rclone gocryptfs legacy\n')
    for row in series:
        f.write(f'"{row[0]}" ' + " ".join("-" if v is None else f"{v:.1f}" for v in row[1:]) + "\n")
