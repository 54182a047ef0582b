# tests/tools/fs-lib.sh - sourced by the filesystem's end-to-end tests after
# tests/lib.sh: a work folder, configurations, publishing, mounting the
# daemon in the foreground with its log captured, and a cleanup that leaves
# no process and no mount behind (checked by fs_no_leftovers).
#
#   fs_init NAME          work folder $W (removed on exit), credentials file
#   fs_conf FILE K=V...   a configuration for the stack's API
#   fs_publish CONF FORMAT NAME FILE
#   fs_mount MNT CONF [OPT...]   starts azaionfs -f; sets FS_PID
#   fs_umount MNT         fusermount3 -u and waits; checks the exit status
AZ_DAEMON=${AZ_DAEMON:-$AZ_BUILD/azaionfs}
AZ_CTL=$AZ_BUILD/azaionctl
PY=/usr/bin/python3
FS_PIDS=()
FS_MNTS=()

fs_cleanup() {
	local m p
	for m in "${FS_MNTS[@]}"; do
		mountpoint -q "$m" 2>/dev/null && fusermount3 -u -z "$m" 2>/dev/null
	done
	for p in "${FS_PIDS[@]}"; do
		kill -0 "$p" 2>/dev/null && kill -TERM "$p" 2>/dev/null
	done
	for p in "${FS_PIDS[@]}"; do
		wait_for 10 fs_gone "$p" || kill -KILL "$p" 2>/dev/null
	done
	[ -n "${W:-}" ] && [ -z "${FS_KEEP:-}" ] && rm -rf "$W"
}

fs_gone() { ! kill -0 "$1" 2>/dev/null; }

fs_init() {
	need fusermount3 mountpoint "$PY" curl
	[ -x "$AZ_DAEMON" ] || bail "missing prerequisite: $AZ_DAEMON (make)"
	[ -x "$AZ_CTL" ] || bail "missing prerequisite: $AZ_CTL (make)"
	need_stack
	# The mount's default group (docs/trust.md 3): the daemon refuses a missing one.
	getent group azaion >/dev/null || groupadd -f --system azaion ||
		bail "missing prerequisite: the group azaion (groupadd failed)"
	W=$(mktemp -d "/tmp/az-$1.XXXXXX")
	trap 'fs_cleanup' EXIT
	trap 'exit 130' INT TERM
	(umask 077 && printf 'email = %s\npassword = %s\n' "$API_EMAIL" "$API_PASSWORD" >"$W/creds")
	# A tag that keeps this run's names apart from every other run's.
	TAG=$(basename "$W" | tr -cd 'a-zA-Z0-9' | tail -c 7)
}

# fs_conf FILE KEY=VALUE...: the stack's API and CA, the test's credentials,
# TPM off and rest_group root unless given, then the arguments.
fs_conf() {
	local f=$1 kv
	shift
	{
		echo "api_url = $API_URL"
		echo "ca_file = $STACK_CA"
		echo "credentials = $W/creds"
		echo "hardware_id = azaionfs-test-hardware"
		for kv in "$@"; do echo "${kv%%=*} = ${kv#*=}"; done
	} >"$f"
	grep -q '^tpm = ' "$f" || echo "tpm = off" >>"$f"
	# A unix: endpoint's group must exist; root's always does.
	grep -q '^rest_group = ' "$f" || echo "rest_group = root" >>"$f"
}

fs_publish() {
	"$AZ_CTL" -c "$1" publish --format "$2" --name "$3" "$4" >>"$W/publish.log" 2>&1
}

# fs_mount MNT CONF [OPT...]: mounts in the foreground (log in MNT.log) and
# waits until the mount answers.
fs_mount() {
	local mnt=$1 conf=$2 o=""
	shift 2
	mkdir -p "$mnt"
	[ $# -gt 0 ] && o=",$(IFS=,; echo "$*")"
	"$AZ_DAEMON" azaion "$mnt" -f -o "config=$conf$o" >"$mnt.log" 2>&1 &
	FS_PID=$!
	FS_PIDS+=("$FS_PID")
	FS_MNTS+=("$mnt")
	wait_for 30 fs_mounted "$mnt" || { cat "$mnt.log"; bail "azaionfs did not mount $mnt"; }
}

fs_mounted() { grep -q " $1 fuse.azaionfs " /proc/mounts; }

# fs_umount MNT PID: unmounts and checks that the daemon exited with 0.
fs_umount() {
	local mnt=$1 pid=$2 rc
	# EBUSY while a stat of the root is under way (the daemon's own, right
	# after a start in the foreground), as on any mount: unmount again.
	wait_for 5 fusermount3 -u "$mnt" || fusermount3 -u "$mnt"
	if ! wait_for 20 fs_gone "$pid"; then
		not_ok "azaionfs ($pid) still runs 20 s after fusermount3 -u $mnt"
		return
	fi
	wait "$pid"
	rc=$?
	if [ "$rc" = 0 ]; then
		ok "azaionfs on $(basename "$mnt") exited cleanly after unmount"
	else
		not_ok "azaionfs on $(basename "$mnt") exited cleanly after unmount (exit status $rc)"
		tail -15 "$mnt.log" | sed 's/^/#   /'
	fi
}

# fs_no_leftovers: no daemon of this test runs, nothing is mounted under $W.
fs_no_leftovers() {
	local p alive=""
	for p in "${FS_PIDS[@]}"; do
		kill -0 "$p" 2>/dev/null && alive="$alive $p"
	done
	check_eq "no azaionfs process left" "$alive" ""
	check_eq "no mount left under $W" "$(grep -c " $W" /proc/mounts)" 0
}

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
mmap_sha() {
	"$PY" -c 'import hashlib, mmap, sys
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    print(hashlib.sha256(m).hexdigest())' "$1"
}
