#!/usr/bin/env bash
# 88-restarts: readers do not notice that the daemon's worker restarts.
# Run twice, with kernel_resend = yes (the kernel's FUSE_NOTIFY_RESEND puts
# back what the dead worker had read) and = no (the next worker replays it
# from the journal it shares with the supervisor). Each run mounts with the
# supervisor in the foreground and, under load from
#  - 8 readers hashing whole models of both formats with sha256sum, the
#    page cache of each model dropped before each round;
#  - one reader of random preads on descriptors kept open throughout,
#    compared with the plaintexts, the longest call timed;
#  - one stat/readdir loop on the mount root, recording any ENOTCONN;
#  - a probe doing a 4 KiB pread every 5 ms, timing each answer;
#  - a container of the stack's dockerd hashing a model through
#    -v MNT:/models:ro (a private bind: no rslave);
# kills the worker with SIGKILL five times and upgrades once with
# azaionctl restart. Then: no read error, no wrong byte, every reader ran
# across the kills, no read waited io_timeout, the root never answered
# ENOTCONN, one worker is left and the pid file names it, the supervisor
# logged each end and how the next worker served (kernel resend or replay).
# The restart figures (kill to the first answered request, in ms) are
# printed and written to $W/restart-figures.txt (FS_KEEP=1 keeps $W).
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
export LC_ALL=C
need sha256sum dd ps
fs_init t88
[ -n "${DOCKER_SOCK:-}" ] && [ -S "$DOCKER_SOCK" ] || bail "the stack's dockerd is not running"
[ -x /usr/bin/docker ] || bail "missing prerequisite: /usr/bin/docker"
dk() { /usr/bin/docker -H "unix://$DOCKER_SOCK" "$@"; }
CONTAINERS=()
cleanup88() {
	local c
	[ -n "${R:-}" ] && touch "$R/stop" 2>/dev/null
	for c in "${CONTAINERS[@]}"; do dk rm -f "$c" >/dev/null 2>&1; done
	fs_cleanup
}
trap cleanup88 EXIT

IO=10
KILLS=5
READERS=8
MIN_ROUNDS=4
F=r88$TAG
STATE=$W/state
PIDFILE=$STATE/azaionfs.pid

# ---- models of both formats, and a small one for the probe
mkdir -p "$W/plain"
MODELS=("$TAG-a1.onnx" "$TAG-a2.onnx" "$TAG-b1.onnx" "$TAG-b2.onnx")
PROBE=$TAG-probe.onnx
declare -A WANT
TPMC=("tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5")
# Format 2 needs an enrolled device: the first mount enrols it, the models
# are published after.
fs_conf "$W/pub.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$STATE" "${TPMC[@]}" \
	"rest_listen=unix:$W/rest-enrol.sock"
fs_mount "$W/mnt-enrol" "$W/pub.conf"
check "the first mount enrolled the device" test -s "$STATE/device_id"
fs_umount "$W/mnt-enrol" "$FS_PID"
for n in "${MODELS[@]}" "$PROBE"; do
	case $n in *-a1.*) s=$((32 << 20)) ;; *-probe.*) s=$((4 << 20)) ;; *) s=$(((32 << 20) + 4099)) ;; esac
	head -c "$s" /dev/urandom >"$W/plain/$n"
	WANT[$n]=$(sha_of "$W/plain/$n")
	case $n in *-a?.*) fmt=1 ;; *) fmt=2 ;; esac
	fs_publish "$W/pub.conf" "$fmt" "$n" "$W/plain/$n" ||
		bail "publishing $n failed: $(tail -3 "$W/publish.log")"
done
ok "published ${#MODELS[@]} models of 32 MiB (formats 1 and 2) and a 4 MiB probe model"

# ---- the readers' programs
cat >"$W/rd.py" <<'EOF'
import errno, os, random, statistics, sys, time

DONTNEED = os.POSIX_FADV_DONTNEED
mode, args = sys.argv[1], sys.argv[2:]


def ename(e):
    return errno.errorcode.get(e.errno, str(e.errno))


if mode == "pread":
    # pread STOP PLAIN_DIR MNT NAME...: random preads on descriptors kept
    # open across the restarts, each compared with the plaintext's bytes.
    stop, pdir, mnt, names = args[0], args[1], args[2], args[3:]
    fds = {n: (os.open(os.path.join(mnt, n), os.O_RDONLY),
               os.open(os.path.join(pdir, n), os.O_RDONLY),
               os.path.getsize(os.path.join(pdir, n))) for n in names}
    r = random.Random(88)
    reads = wrong = errs = 0
    longest = longest_at = 0.0
    bad = []
    while not os.path.exists(stop):
        n = r.choice(names)
        fd, pfd, size = fds[n]
        off = r.randrange(size)
        ln = r.choice([1, 4096, 65536, 131072, r.randrange(1, 1 << 20)])
        # Only these pages leave the page cache: the call reaches the daemon.
        os.posix_fadvise(fd, off, ln, DONTNEED)
        t0 = time.time()
        try:
            got, e = os.pread(fd, ln, off), None
        except OSError as x:
            got, e = None, x
        dt = time.time() - t0
        reads += 1
        if dt > longest:
            longest, longest_at = dt, t0
        if e is not None:
            errs += 1
            bad.append("%.3f %s@%d+%d: %s" % (t0, n, off, ln, e))
        elif got != os.pread(pfd, ln, off):
            wrong += 1
            bad.append("%.3f %s@%d+%d: wrong bytes" % (t0, n, off, ln))
    print("reads %d wrong %d errors %d longest %.3f at %.3f" % (reads, wrong, errs, longest, longest_at))
    for b in bad[:5]:
        print("# " + b)

elif mode == "probe":
    # probe STOP FILE PLAIN OUT: a 4 KiB pread every 5 ms, its page cache
    # dropped first, so each is a request the daemon answers.
    stop, path, plain, out = args
    fd, pfd = os.open(path, os.O_RDONLY), os.open(plain, os.O_RDONLY)
    blocks = os.path.getsize(plain) // 4096
    r = random.Random(5)
    with open(out, "w", buffering=1) as o:
        while not os.path.exists(stop):
            off = r.randrange(blocks) * 4096
            # The whole file: read-ahead brought in more than this page.
            os.posix_fadvise(fd, 0, 0, DONTNEED)
            t0 = time.time()
            try:
                res = "ok" if os.pread(fd, 4096, off) == os.pread(pfd, 4096, off) else "wrong"
            except OSError as e:
                res = "err " + ename(e)
            o.write("%.6f %.6f %s\n" % (t0, time.time(), res))
            time.sleep(0.005)

elif mode == "stat":
    # stat STOP MNT: stat and readdir of the mount root every 10 ms.
    stop, mnt = args
    n = enotconn = other = 0
    bad = []
    while not os.path.exists(stop):
        for f in (os.stat, os.listdir):
            n += 1
            try:
                f(mnt)
            except OSError as e:
                if e.errno == errno.ENOTCONN:
                    enotconn += 1
                else:
                    other += 1
                bad.append("%.3f %s: %s" % (time.time(), f.__name__, e))
        time.sleep(0.01)
    print("calls %d enotconn %d other %d" % (n, enotconn, other))
    for b in bad[:5]:
        print("# " + b)

elif mode == "analyse":
    # analyse DIR: the hash readers' rounds and the probe's answers against
    # the kills (DIR/events: "TIME PID kill|upgrade"). Prints "key value".
    d = args[0]
    events = [l.split() for l in open(os.path.join(d, "events"))]
    events = [(float(t), p, k) for t, p, k in events]
    rounds, errs, wrong, bad, not_spanning = [], 0, 0, [], []
    spanned = set()
    for i in range(int(args[1])):
        lines = [l.split(None, 4) for l in open(os.path.join(d, "hash-%d.log" % i))]
        rounds.append(sum(1 for l in lines if len(l) > 3 and l[3] == "ok"))
        mine = 0
        for l in lines:
            if len(l) < 4 or l[3] not in ("ok", "wrong", "err"):
                errs += 1
                bad.append(" ".join(l))
                continue
            if l[3] != "ok":
                errs += l[3] == "err"
                wrong += l[3] == "wrong"
                bad.append(" ".join(l))
                continue
            t0, t1 = float(l[0]), float(l[1])
            for j, (t, _, _) in enumerate(events):
                if t0 < t < t1:
                    spanned.add(j)
                    mine += 1
        if not mine:
            not_spanning.append(str(i))
    print("rounds_min %d" % min(rounds))
    print("rounds_all %s" % ",".join(map(str, rounds)))
    print("hash_errors %d" % errs)
    print("hash_wrong %d" % wrong)
    print("hash_bad %s" % (" | ".join(bad[:3]) or "-"))
    print("readers_not_spanning %s" % (",".join(not_spanning) or "-"))
    print("events_not_spanned %s" % (",".join("%s#%d" % (events[j][2], j + 1)
                                           for j in range(len(events)) if j not in spanned) or "-"))
    probe = [l.split(None, 2) for l in open(os.path.join(d, "probe.log"))]
    probe = [(float(a), float(b), c.strip()) for a, b, c in probe]
    print("probe_reads %d" % len(probe))
    print("probe_bad %d" % sum(1 for p in probe if p[2] != "ok"))
    print("probe_longest_ms %.0f" % (max((p[1] - p[0] for p in probe), default=0) * 1000))
    # The first answer by the next worker: to a read issued after the kill,
    # or to one in flight then that it answers (resent or replayed). An
    # answer the old worker wrote just before the kill can reach the probe
    # a few ms after it on a busy machine: one that comes 20 ms after the
    # kill or later is the next worker's.
    figs = []
    for t, _, k in events:
        if k != "kill":
            continue
        after = [p[1] for p in probe
                 if p[2] == "ok" and p[1] > t and (p[0] > t or p[1] > t + 0.02)]
        figs.append("%.0f" % ((min(after) - t) * 1000) if after else "none")
    print("figures %s" % " ".join(figs))
    ms = [float(f) for f in figs if f != "none"]
    if ms:
        print("figures_summary %.0f/%.0f/%.0f" % (min(ms), statistics.median(ms), max(ms)))
    else:
        print("figures_summary none")
    print("figures_max %.0f" % (max(ms) if ms else 1e9))
EOF

# ---- helpers
worker_pid() { sed -n 's/^worker \([0-9][0-9]*\)$/\1/p' "$PIDFILE" 2>/dev/null; }
# new_worker OLD: the pid file names a live worker other than OLD.
new_worker() {
	local w
	w=$(worker_pid)
	[ -n "$w" ] && [ "$w" != "$1" ] && kill -0 "$w" 2>/dev/null
}
alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
all_gone() {
	local p
	for p in "$@"; do alive "$p" && return 1; done
	return 0
}
children() { ps -o pid= --ppid "$1" | tr -d ' ' | tr '\n' ' ' | sed 's/ $//'; }
one_child() { [ "$(ps -o pid= --ppid "$1" | wc -l)" = 1 ]; }

# hash_reader ID: hashes the models in turn from model ID on, the page
# cache dropped first; a line per round: T0 T1 NAME ok|wrong|err DETAIL.
hash_reader() {
	local id=$1 k=0 n out rc t0 t1 e
	while [ ! -e "$R/stop" ]; do
		n=${MODELS[$(((id + k) % ${#MODELS[@]}))]}
		k=$((k + 1))
		e=$(dd if="$MNT/$n" iflag=nocache count=0 status=none 2>&1)
		t0=${EPOCHREALTIME/,/.}
		out=$(sha256sum "$MNT/$n" 2>&1)
		rc=$?
		t1=${EPOCHREALTIME/,/.}
		[ -z "$e" ] || echo "$t0 $t0 $n err dd: $e"
		if [ $rc -ne 0 ]; then
			echo "$t0 $t1 $n err $out"
		elif [ "${out%% *}" = "${WANT[$n]}" ]; then
			echo "$t0 $t1 $n ok"
		else
			echo "$t0 $t1 $n wrong ${out%% *}"
		fi
	done >"$R/hash-$id.log" 2>&1
}
# warm: every hash reader has a result and the probe answers.
warm() {
	local i
	for ((i = 0; i < READERS; i++)); do [ -s "$R/hash-$i.log" ] || return 1; done
	[ "$(wc -l <"$R/probe.log" 2>/dev/null || echo 0)" -ge 20 ]
}
container_rounds() { [ "$(dk logs "$CN" 2>&1 | grep -c '^[0-9]')" -ge "$1" ]; }

# restarts yes|no: one mount, the load, the kills and the upgrade, the checks.
restarts() {
	local rs=$1 conf=$W/conf-$1 i w pid sup out rc old new n a k v c0 c1 t
	local pids=() killed=() workers=()
	R=$W/run-$rs
	MNT=$W/mnt-$rs
	CN=azt88-$TAG-$rs
	mkdir -p "$R"
	echo "# ---- kernel_resend = $rs"
	fs_conf "$conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$STATE" \
		"cache_dir=$W/cache-$rs" "io_timeout=$IO" "kernel_resend=$rs" "${TPMC[@]}" \
		"rest_listen=unix:$W/rest-$rs.sock"
	fs_mount "$MNT" "$conf"
	sup=$FS_PID
	check_eq "resend=$rs: the pid file names the supervisor (azaionfs -f's own process)" \
		"$(sed -n 1p "$PIDFILE" 2>&1)" "supervisor $sup"
	check_eq "resend=$rs: and the mount point" "$(sed -n 3p "$PIDFILE" 2>&1)" "mount $MNT"
	check_eq "resend=$rs: the pid file is 0600" "$(stat -c %a "$PIDFILE" 2>&1)" 600
	w=$(worker_pid)
	check "resend=$rs: its worker ${w:-?} runs, a child of the supervisor" \
		test -n "$w" -a "$(ps -o ppid= -p "${w:-0}" 2>/dev/null | tr -d ' ')" = "$sup"
	[ -n "$w" ] && workers+=("$w")

	# -- the load
	for ((i = 0; i < READERS; i++)); do
		hash_reader "$i" &
		pids+=($!)
	done
	"$PY" "$W/rd.py" pread "$R/stop" "$W/plain" "$MNT" "${MODELS[@]}" >"$R/pread.out" 2>&1 &
	pids+=($!)
	"$PY" "$W/rd.py" stat "$R/stop" "$MNT" >"$R/stat.out" 2>&1 &
	pids+=($!)
	"$PY" "$W/rd.py" probe "$R/stop" "$MNT/$PROBE" "$W/plain/$PROBE" "$R/probe.log" \
		>"$R/probe.err" 2>&1 &
	pids+=($!)
	n=${MODELS[3]}
	out=$(dk run -d --name "$CN" --network none -v "$MNT:/models:ro" "$DOCKER_TEST_IMAGE" \
		sh -c "while :; do h=\$(sha256sum /models/$n 2>&1); rc=\$?; echo \"\$(date +%s) \$rc \$h\"; done" 2>&1)
	rc=$?
	CONTAINERS+=("$CN")
	[ $rc -eq 0 ] || echo "$out" | sed 's/^/# /'
	check "resend=$rs: a container reading $n through -v $MNT:/models:ro starts" test $rc -eq 0
	wait_for 90 warm || not_ok "resend=$rs: the readers did not all get going within 90 s"
	wait_for 60 container_rounds 1 || not_ok "resend=$rs: the container hashed nothing within 60 s"

	# -- SIGKILL the worker five times, each once the pid file names the next one
	: >"$R/events"
	c0=$(dk logs "$CN" 2>&1 | grep -c '^[0-9]')
	for ((i = 1; i <= KILLS; i++)); do
		w=$(worker_pid)
		if [ -z "$w" ]; then
			not_ok "resend=$rs: kill $i: the pid file names no worker"
			break
		fi
		t=${EPOCHREALTIME/,/.}
		kill -KILL "$w"
		echo "$t $w kill" >>"$R/events"
		killed+=("$w")
		if ! wait_for 30 new_worker "$w"; then
			not_ok "resend=$rs: kill $i of worker $w: no next worker in the pid file within 30 s"
			break
		fi
		workers+=("$(worker_pid)")
		sleep 2
	done
	check_eq "resend=$rs: $KILLS workers were killed, each followed by a next one" \
		"$(grep -c ' kill$' "$R/events")/${#workers[@]}" "$KILLS/$((KILLS + 1))"

	# -- one upgrade
	old=$(worker_pid)
	echo "${EPOCHREALTIME/,/.} ${old:-0} upgrade" >>"$R/events"
	out=$("$AZ_CTL" -c "$conf" restart 2>&1)
	rc=$?
	new=$(worker_pid)
	c1=$(dk logs "$CN" 2>&1 | grep -c '^[0-9]')
	echo "# $out"
	check_eq "resend=$rs: azaionctl restart exits 0" "$rc" 0
	check_eq "resend=$rs: it says which worker serves now" "$out" \
		"azaionctl: restart: worker pid $new serves $MNT (was $old)"
	check "resend=$rs: the pid file names a new worker" test -n "$new" -a "$new" != "$old"
	[ -n "$new" ] && workers+=("$new")
	check "resend=$rs: the old worker $old finishes and exits" wait_for 20 fs_gone "${old:-0}"
	sleep 3

	# -- stop the load
	touch "$R/stop"
	a=$(dk logs "$CN" 2>&1)
	dk rm -f "$CN" >/dev/null 2>&1
	wait_for 60 all_gone "${pids[@]}"
	for pid in "${pids[@]}"; do
		alive "$pid" || continue
		not_ok "resend=$rs: reader $pid still runs 60 s after stop"
		pkill -KILL -P "$pid"
		kill -KILL "$pid"
	done
	wait "${pids[@]}" 2>/dev/null

	# -- the readers' results
	declare -A got
	"$PY" "$W/rd.py" analyse "$R" "$READERS" >"$R/analyse.out" 2>&1 ||
		{ not_ok "resend=$rs: the readers' logs could not be analysed"; sed 's/^/# /' "$R/analyse.out"; }
	while read -r k v; do [ -n "$k" ] && got[$k]=$v; done <"$R/analyse.out"
	check_eq "resend=$rs: $READERS sha256sum readers: no read error" "${got[hash_errors]:-?}" 0
	check_eq "resend=$rs: no wrong hash" "${got[hash_wrong]:-?}" 0
	[ "${got[hash_bad]:--}" = - ] || echo "# first bad rounds: ${got[hash_bad]}"
	check "resend=$rs: each reader hashed at least $MIN_ROUNDS models right (${got[rounds_all]:-?})" \
		test "${got[rounds_min]:-0}" -ge "$MIN_ROUNDS"
	check_eq "resend=$rs: each reader had a right round across a kill or the upgrade" \
		"${got[readers_not_spanning]:-?}" -
	check_eq "resend=$rs: each kill and the upgrade fell inside a right round" \
		"${got[events_not_spanned]:-?}" -
	read -r _ reads _ wrong _ errs _ longest _ <"$R/pread.out"
	grep '^#' "$R/pread.out"
	check "resend=$rs: random preads on kept descriptors ran (${reads:-0})" test "${reads:-0}" -ge 200
	check_eq "resend=$rs: none failed, none wrong" "${errs:-?}/${wrong:-?}" 0/0
	echo "# longest pread ${longest:-?} s"
	check "resend=$rs: the longest pread (${longest:-?} s) is under io_timeout ($IO s)" \
		awk -v t="${longest:-99}" -v m="$IO" 'BEGIN { exit !(t < m) }'
	read -r _ calls _ enotconn _ other <"$R/stat.out"
	grep '^#' "$R/stat.out"
	check "resend=$rs: the root was stat-ed and listed throughout (${calls:-0})" test "${calls:-0}" -ge 200
	check_eq "resend=$rs: it never answered ENOTCONN" "${enotconn:-?}" 0
	check_eq "resend=$rs: nor any other error" "${other:-?}" 0
	check_eq "resend=$rs: the probe's 4 KiB preads all right" "${got[probe_bad]:-?}" 0
	check "resend=$rs: and they ran (${got[probe_reads]:-0}, longest ${got[probe_longest_ms]:-?} ms)" \
		test "${got[probe_reads]:-0}" -ge 500
	n=$(echo "$a" | grep -c "^[0-9][0-9]* 0 ${WANT[${MODELS[3]}]}  /models/")
	if [ "$(echo "$a" | grep -vc "^[0-9][0-9]* 0 ${WANT[${MODELS[3]}]}  /models/")" != 0 ]; then
		echo "$a" | grep -v " 0 ${WANT[${MODELS[3]}]} " | head -5 | sed 's/^/# container: /'
	fi
	check_eq "resend=$rs: the container saw no error and no wrong hash" \
		"$(echo "$a" | grep -vc "^[0-9][0-9]* 0 ${WANT[${MODELS[3]}]}  /models/")" 0
	check "resend=$rs: it hashed the model at least twice ($n)" test "$n" -ge 2
	check "resend=$rs: it hashed before the first kill ($c0) and after the upgrade ($c1, then $n)" \
		test "$c0" -ge 1 -a "$n" -gt "$c1"

	# -- the figures
	echo "# restart figures (resend=$rs): ${got[figures_summary]:-none} ms (each kill: ${got[figures]:-none})"
	echo "resend=$rs min/median/max ${got[figures_summary]:-none} ms; each kill: ${got[figures]:-none}" \
		>>"$W/restart-figures.txt"
	echo "# the supervisor's own (worker end to next serving): $(grep -oE "serves $MNT: [0-9]+ ms after" "$MNT.log" |
		awk '{ printf "%s ", $(NF - 2) }')ms"
	check_eq "resend=$rs: each of the $KILLS kills has a figure" \
		"$(echo "${got[figures]:-}" | wc -w)/$(echo "${got[figures]:-}" | grep -c none)" "$KILLS/0"
	check "resend=$rs: no restart took io_timeout (longest ${got[figures_max]:-?} ms)" \
		test "${got[figures_max]:-1000000000}" -lt $((IO * 1000))

	# -- processes, the pid file, the log
	wait_for 10 one_child "$sup"
	check_eq "resend=$rs: exactly one worker is left (children of $sup)" \
		"$(ps -o pid= --ppid "$sup" | wc -l)" 1
	w=$(worker_pid)
	check_eq "resend=$rs: it is the one the pid file names" "$(children "$sup")" "${w:-none}"
	check "resend=$rs: and it is alive" alive "$w"
	check_eq "resend=$rs: the supervisor logged $KILLS ends by signal 9" \
		"$(grep -cE 'ended: killed by signal 9( \(Killed\))?; starting worker' "$MNT.log")" "$KILLS"
	a=""
	for pid in "${killed[@]}"; do
		grep -q "(pid $pid) ended: killed by signal 9" "$MNT.log" || a="$a $pid"
	done
	check_eq "resend=$rs: the log names each killed worker's pid" "${#killed[@]}:$a" "$KILLS:"
	local kr rp
	kr=$(grep -cE "serves $MNT: [0-9]+ ms after worker [0-9]+ ended \(kernel resend\)" "$MNT.log")
	rp=$(grep -cE "serves $MNT: [0-9]+ ms after worker [0-9]+ ended \([0-9]+ requests? replayed from user space\)" "$MNT.log")
	grep -E "serves $MNT|ended:|upgrade:" "$MNT.log" | head -14 | sed 's/^/# log: /'
	if [ "$rs" = yes ]; then
		check_eq "resend=yes: each next worker served by kernel resend, none by replay" "$kr/$rp" "$KILLS/0"
	else
		check_eq "resend=no: each next worker served by replay from user space, none by kernel resend" \
			"$kr/$rp" "0/$KILLS"
		n=$(grep -oE "\([0-9]+ requests? replayed from user space\)" "$MNT.log" | tr -dc '0-9\n' |
			awk '{ s += $1 } END { print s + 0 }')
		check "resend=no: requests in flight were replayed ($n over $KILLS kills)" test "$n" -gt 0
	fi
	check "resend=$rs: the upgrade is logged" grep -qE \
		"upgrade: worker [0-9]+ \(pid ${new:-x}\) serves $MNT; worker [0-9]+ \(pid ${old:-x}\) finishes what it has read and exits" \
		"$MNT.log"

	# -- unmount
	fs_umount "$MNT" "$sup"
	check "resend=$rs: the pid file is removed at exit" test ! -e "$PIDFILE"
	a=""
	for pid in "${workers[@]}"; do alive "$pid" && a="$a $pid"; done
	check_eq "resend=$rs: none of its $((KILLS + 2)) workers is left" "${#workers[@]}:$a" "$((KILLS + 2)):"
}

# ---- the supervisor itself killed: the fd store keeps the mount. systemd
# cannot run here (no PID 1 of ours): tests/tools/fdstore-mock.py is a MOCK
# of its fd store and Restart=on-failure, named as such.
fdstore() {
	local fd=$W/fdstore conf=$W/conf-fd mock sup1 sup2 i pids=() pid rc n bad
	echo "# ---- the supervisor SIGKILLed, the mount kept in the service's fd store (mock)"
	R=$W/run-fd
	MNT=$W/mnt-fd
	mkdir -p "$fd" "$R" "$MNT"
	fs_conf "$conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$STATE" \
		"cache_dir=$W/cache-fd" "io_timeout=$IO" "kernel_resend=yes" "${TPMC[@]}" \
		"rest_listen=unix:$W/rest-fd.sock"
	"$PY" "$AZ_TOP/tests/tools/fdstore-mock.py" "$fd" "$AZ_DAEMON" azaion "$MNT" -f \
		-o "config=$conf" >"$MNT.log" 2>&1 &
	mock=$!
	FS_PIDS+=("$mock")
	FS_MNTS+=("$MNT")
	wait_for 30 fs_mounted "$MNT" || { sed 's/^/# /' "$MNT.log"; bail "no mount under the fd-store mock"; }
	wait_for 10 grep -q journal "$fd/stored" 2>/dev/null
	check_eq "fd store: the supervisor stored the mount's descriptor and the journal" \
		"$(cat "$fd/stored" 2>&1)" "azaionfs-fuse azaionfs-journal"
	sup1=$(cat "$fd/pid")
	for ((i = 0; i < 2; i++)); do
		hash_reader "$i" &
		pids+=($!)
	done
	"$PY" "$W/rd.py" stat "$R/stop" "$MNT" >"$R/stat.out" 2>&1 &
	pids+=($!)
	wait_for 60 test -s "$R/hash-0.log" -a -s "$R/hash-1.log"
	kill -KILL "$sup1"
	sup2=""
	wait_for 30 sh -c '[ "$(cat "$1")" != "$2" ]' sh "$fd/pid" "$sup1" && sup2=$(cat "$fd/pid")
	check "fd store: a new supervisor (${sup2:-none}) was started for the killed one ($sup1)" \
		test -n "$sup2"
	check "fd store: it took the mount over from the store" \
		wait_for 30 grep -q "taking over $MNT from the service's fd store" "$MNT.log"
	check "fd store: its worker serves (the pid file names supervisor ${sup2:-?})" \
		wait_for 30 grep -qx "supervisor ${sup2:-x}" "$PIDFILE"
	check "fd store: the mount stayed mounted" fs_mounted "$MNT"
	n=$(cat "$R"/hash-*.log | wc -l)
	wait_for 60 sh -c '[ "$(cat "$1"/hash-*.log | wc -l)" -ge $(($2 + 4)) ]' sh "$R" "$n"
	touch "$R/stop"
	wait_for 60 all_gone "${pids[@]}"
	wait "${pids[@]}" 2>/dev/null
	bad=$(grep -vc " ok$" "$R"/hash-*.log | awk -F: '{ s += $2 } END { print s + 0 }')
	grep -hv " ok$" "$R"/hash-*.log | head -3 | sed 's/^/# /'
	check_eq "fd store: 2 readers across the supervisor's death: no error, no wrong hash" "$bad" 0
	check "fd store: and they read after it ($(cat "$R"/hash-*.log | wc -l) rounds, $n before)" \
		test "$(cat "$R"/hash-*.log | wc -l)" -ge $((n + 4))
	read -r _ calls _ enotconn _ other <"$R/stat.out"
	check_eq "fd store: the root never answered ENOTCONN (${calls:-0} calls)" "${enotconn:-?}/${other:-?}" 0/0
	check_eq "fd store: started twice, no more" "$(cat "$fd/starts")" 2
	# A stop (systemctl stop: SIGTERM) unmounts and ends it.
	kill -TERM "$mock"
	wait_for 20 fs_gone "$mock"
	wait "$mock"
	rc=$?
	check_eq "fd store: SIGTERM stops it with status 0" "$rc" 0
	check "fd store: nothing stays mounted" sh -c "! grep -q ' $MNT ' /proc/mounts"
	check "fd store: the pid file is removed" test ! -e "$PIDFILE"
}

# ---- a file republished while the worker restarts: a handle opened on the
# old version reads the old bytes or fails with EIO, never the new ones or a
# mix; opened again, the file reads the new version.
republish() {
	local conf=$W/conf-rp mnt=$W/mnt-rp n=$TAG-rp.onnx old new res
	echo "# ---- a file republished across a worker's restart"
	head -c $((3 << 20)) /dev/urandom >"$W/plain/rp-v1"
	head -c $((3 << 20)) /dev/urandom >"$W/plain/rp-v2"
	fs_conf "$conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$STATE" \
		"cache_dir=$W/cache-rp" "io_timeout=$IO" "${TPMC[@]}" "rest_listen=unix:$W/rest-rp.sock"
	fs_publish "$conf" 1 "$n" "$W/plain/rp-v1" || bail "publishing $n failed"
	fs_mount "$mnt" "$conf"
	wait_for 20 test -e "$mnt/$n"
	"$PY" - "$mnt/$n" "$W/plain/rp-v1" "$W/plain/rp-v2" "$W/rp" <<'PYEOF' >"$W/rp.out" 2>&1 &
import errno, os, sys, time
path, v1, v2, flag = sys.argv[1:]
a, b = open(v1, "rb").read(), open(v2, "rb").read()
fd = os.open(path, os.O_RDONLY)
first = os.pread(fd, 1 << 20, 0)
print("first", "v1" if first == a[: 1 << 20] else "other", flush=True)
open(flag + ".ready", "w").close()
while not os.path.exists(flag + ".go"):
    time.sleep(0.05)
# The kernel's cached pages of the old version would answer without asking.
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
try:
    got = os.pread(fd, 1 << 20, 1 << 20)
    want_a, want_b = a[1 << 20 : 2 << 20], b[1 << 20 : 2 << 20]
    print("old", "v1" if got == want_a else "v2" if got == want_b else "mixed", flush=True)
except OSError as e:
    print("old", errno.errorcode.get(e.errno, str(e.errno)), flush=True)
os.close(fd)
fd = os.open(path, os.O_RDONLY)
got = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
print("new", "v2" if got == b else "v1" if got == a else "other", flush=True)
PYEOF
	res=$!
	wait_for 30 test -e "$W/rp.ready"
	check_eq "republish: a handle opened on version 1 reads it" "$(sed -n 1p "$W/rp.out")" "first v1"
	fs_publish "$conf" 1 "$n" "$W/plain/rp-v2" || bail "republishing $n failed"
	old=$(worker_pid)
	kill -KILL "$old"
	wait_for 30 new_worker "$old"
	new=$(worker_pid)
	check "republish: worker $old killed, $new serves" test -n "$new" -a "$new" != "$old"
	touch "$W/rp.go"
	wait_for 60 fs_gone "$res"
	wait "$res"
	sed 's/^/# /' "$W/rp.out"
	check "republish: the old handle reads version 1 or fails with EIO, never version 2 or a mix" \
		grep -qxE "old (v1|EIO)" "$W/rp.out"
	if grep -qx "old EIO" "$W/rp.out"; then
		check "republish: the log names the file and says to reopen it" \
			grep -q "$n.*republished.*reopen" "$mnt.log"
	fi
	check_eq "republish: opened again, the file reads version 2" "$(sed -n 3p "$W/rp.out")" "new v2"
	fs_umount "$mnt" "$FS_PID"
}

restarts yes
restarts no
fdstore
republish
sed 's/^/# /' "$W/restart-figures.txt"
fs_no_leftovers
done_testing
