#!/usr/bin/env bash
# 77-loud: a mount that does not pretend. Each refusal exits non-zero with
# its reason and leaves no mount, through the daemon and through
# mount -t fuse.azaionfs:
#  - credentials the API refuses (401); the API out of reach with no saved
#    catalog (with one it is an offline start, said in the log); a device
#    with no credentials at all (a TPM not enrolled yet) still mounts;
#  - a mount point that is not a directory, not empty or already mounted,
#    unless -o nonempty;
#  - a side endpoint that cannot start: a busy port, a token file others
#    can read, a short token, a rest_group that does not exist;
#  - an option refused at the FUSE handshake (max_read): reported before
#    the mount command returns, and no mount left;
#  - offline format 1: read once, the API refused, read again from the
#    small part kept in state_dir (0600): the same bytes; a 404 of the API
#    removes the kept copy.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
. "$AZ_TOP/tests/tools/fault-lib.sh"
need mount umount
fs_init t77

free_port() {
	"$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# mount(8) finds the daemon only in a system folder (see 21-fs-mount).
SYSLINK=/usr/local/sbin/azaionfs
restore_syslink() {
	[ -L "$SYSLINK" ] && [ "$(readlink "$SYSLINK")" = "$AZ_DAEMON" ] && rm -f "$SYSLINK"
	[ -e "$W/saved-azaionfs" ] && mv "$W/saved-azaionfs" "$SYSLINK"
}
trap 'restore_syslink; fs_cleanup; fp_cleanup' EXIT
mkdir -p "$(dirname "$SYSLINK")"
if [ -e "$SYSLINK" ] || [ -L "$SYSLINK" ]; then
	mv "$SYSLINK" "$W/saved-azaionfs" || bail "cannot move $SYSLINK aside"
fi
ln -s "$AZ_DAEMON" "$SYSLINK" || bail "cannot link $SYSLINK"
# Before each mount -t: this build's daemon is still the one mount(8) runs
# (a test that installs azaionfs meanwhile would put another one there).
link_check() {
	[ "$(readlink "$SYSLINK")" = "$AZ_DAEMON" ] ||
		bail "$SYSLINK no longer links to $AZ_DAEMON (another test installed azaionfs meanwhile)"
}

F=l77$TAG
A=${TAG}-a.onnx
head -c 1000003 /dev/urandom >"$W/$A"
fp_start API "$API_URL"
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "io_timeout=3" \
	"rest_listen=unix:$W/rest.sock"
fs_publish "$W/conf" 1 "$A" "$W/$A" || bail "publishing failed: $(tail -3 "$W/publish.log")"

# refused WHAT MNT PATTERN -- COMMAND...: COMMAND exits non-zero within 60 s,
# its output holds PATTERN, and no mount at MNT is added.
refused() {
	local what=$1 mnt=$2 pat=$3 out rc before
	shift 4
	# mount_t: mount -t fuse.azaionfs
	if [ "$1" = mount_t ]; then
		shift
		link_check
		set -- mount -t fuse.azaionfs "$@"
	fi
	before=$(grep -c " $mnt fuse" /proc/mounts)
	out=$(timeout 60 "$@" 2>&1)
	rc=$?
	if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -qF -- "$pat" <<<"$out"; then
		ok "$what: exit $rc, says '$(grep -F -m1 -- "$pat" <<<"$out" | sed 's/.*azaionfs[^:]*: //' | head -c 200)'"
	else
		not_ok "$what: rc=$rc, wanted '$pat' in: $(tail -4 <<<"$out" | tr '\n' '|')"
	fi
	check_eq "  no mount is added at $(basename "$mnt")" "$(grep -c " $mnt fuse" /proc/mounts)" "$before"
}
daemon_of() { pgrep -f -- "azaionfs azaion $1( |$)" | head -1; }
# mounted_bg MNT: a daemon started without -f is mounted there; records it for the cleanup.
mounted_bg() {
	local pid
	pid=$(daemon_of "$1")
	[ -n "$pid" ] && FS_PIDS+=("$pid")
	FS_MNTS+=("$1")
	fs_mounted "$1"
}

# ---- credentials the API refuses
(umask 077 && printf 'email = %s\npassword = wrong%s\n' "$API_EMAIL" "$TAG" >"$W/bad.creds")
fs_conf "$W/bad.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-bad" "io_timeout=3" \
	"rest_listen=unix:$W/rest-bad.sock" "credentials=$W/bad.creds"
sed -i "/^credentials = $(sed 's|/|\\/|g' <<<"$W")\/creds$/d" "$W/bad.conf"
mkdir -p "$W/m1"
refused "wrong password, daemon" "$W/m1" "refused the credentials in $W/bad.creds" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/bad.conf"
refused "wrong password, mount -t fuse.azaionfs" "$W/m1" "refused the credentials" -- \
	mount_t azaion "$W/m1" -o "config=$W/bad.conf"
check_eq "  no daemon is left" "$(daemon_of "$W/m1")" ""

# ---- the API out of reach, no saved catalog; then with one
fs_conf "$W/off.conf" "api_url=https://127.0.0.1:1" "cdn_url=$NGINX_URL" "folder=$F" \
	"state_dir=$W/state-off" "io_timeout=2" "rest_listen=unix:$W/rest-off.sock"
refused "API out of reach, no saved catalog, daemon" "$W/m1" "holds no saved catalog" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/off.conf"
refused "API out of reach, no saved catalog, mount -t fuse.azaionfs" "$W/m1" \
	"holds no saved catalog" -- mount_t azaion "$W/m1" -o "config=$W/off.conf"
fs_mount "$W/m1" "$W/conf"
wait_for 20 test -e "$W/m1/$A" || bail "the mount does not list $A"
fs_umount "$W/m1" "$FS_PID"
check "  the catalog is saved in state_dir" test -s "$W/state/catalog.json"
sed -i "s|^state_dir = .*|state_dir = $W/state|" "$W/off.conf"
link_check
out=$(timeout 60 mount -t fuse.azaionfs azaion "$W/m1" -o "config=$W/off.conf,log_file=$W/off.log" 2>&1)
check "API out of reach with a saved catalog: mount -t fuse.azaionfs succeeds (offline start) ($out)" \
	mounted_bg "$W/m1"
check "  the log says it is an offline start" grep -q "offline start: the API at https://127.0.0.1:1 is out of reach" "$W/off.log"
check_eq "  it lists the saved catalog" "$(ls "$W/m1")" "$A"
pid=$(daemon_of "$W/m1")
umount "$W/m1"
check "  umount ends it" wait_for 10 fs_gone "${pid:-0}"

# ---- no credentials at all, on a TPM not enrolled yet: mounts (its endpoint is the way in)
fs_conf "$W/first.conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state-first" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "rest_listen=unix:$W/rest-first.sock"
sed -i '/^credentials = /d' "$W/first.conf"
out=$(timeout 60 "$AZ_DAEMON" azaion "$W/m1" -o "config=$W/first.conf" 2>&1)
rc=$?
check_eq "no credentials, TPM not enrolled: the daemon mounts, exit 0 ($(tail -1 <<<"$out"))" "$rc" 0
check "  mounted" mounted_bg "$W/m1"
check "  its side endpoint answers" \
	curl -sf --max-time 5 --unix-socket "$W/rest-first.sock" http://localhost/health -o /dev/null
check "  the device is not enrolled" test ! -e "$W/state-first/device_id"
pid=$(daemon_of "$W/m1")
fusermount3 -u "$W/m1"
wait_for 10 fs_gone "${pid:-0}"

# ---- the mount point
touch "$W/plainfile"
refused "a mount point that is a file, daemon" "$W/plainfile" "is not a directory" -- \
	"$AZ_DAEMON" azaion "$W/plainfile" -o "config=$W/conf"
mkdir -p "$W/full"
echo keep >"$W/full/keep.txt"
refused "a mount point that is not empty, daemon" "$W/full" \
	"mount point $W/full is not empty" -- "$AZ_DAEMON" azaion "$W/full" -o "config=$W/conf"
refused "a mount point that is not empty, mount -t fuse.azaionfs" "$W/full" \
	"add -o nonempty" -- mount_t azaion "$W/full" -o "config=$W/conf"
check_eq "  its file is untouched" "$(cat "$W/full/keep.txt")" keep
fs_mount "$W/m1" "$W/conf"
p1=$FS_PID
refused "a mount point already mounted, daemon" "$W/m1" "$W/m1 is already mounted" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/conf,rest_listen=unix:$W/rest2.sock"
check "  the first mount still serves" test -e "$W/m1/$A"
fs_umount "$W/m1" "$p1"
out=$(timeout 60 "$AZ_DAEMON" azaion "$W/full" -o "config=$W/conf,nonempty" 2>&1)
rc=$?
check_eq "-o nonempty: mounts over a folder that is not empty, exit 0 ($(tail -1 <<<"$out"))" "$rc" 0
check "  mounted" mounted_bg "$W/full"
check "  it serves the models" test -e "$W/full/$A"
pid=$(daemon_of "$W/full")
fusermount3 -u "$W/full"
wait_for 10 fs_gone "${pid:-0}"
check_eq "  the folder's file is back" "$(cat "$W/full/keep.txt")" keep

# ---- the side endpoint cannot start
P=$(free_port)
"$PY" -c 'import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); time.sleep(600)' "$P" &
busy=$!
wait_for 10 sh -c "ss -ltn | grep -q '127.0.0.1:$P '"
refused "rest_listen on a busy port, daemon" "$W/m1" "cannot listen on 127.0.0.1:$P" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/conf,rest_listen=127.0.0.1:$P"
refused "rest_listen on a busy port, mount -t fuse.azaionfs" "$W/m1" \
	"the side endpoint on 127.0.0.1:$P cannot start" -- \
	mount_t azaion "$W/m1" -o "config=$W/conf,rest_listen=127.0.0.1:$P"
kill "$busy" 2>/dev/null
wait "$busy" 2>/dev/null
openssl rand -hex 32 >"$W/token"
chmod 644 "$W/token"
refused "a rest_token_file others can read" "$W/m1" "chmod 600" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/conf,rest_listen=127.0.0.1:$P,rest_token_file=$W/token"
echo short >"$W/short.token"
chmod 600 "$W/short.token"
refused "a token of 5 characters" "$W/m1" "at least 16" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/conf,rest_listen=127.0.0.1:$P,rest_token_file=$W/short.token"
refused "a rest_group that does not exist" "$W/m1" "no group 'nosuch$TAG'" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/conf,rest_group=nosuch$TAG"

# ---- an option refused at the FUSE handshake
refused "-o max_read=4096, daemon" "$W/m1" "FUSE handshake of $W/m1 failed" -- \
	"$AZ_DAEMON" azaion "$W/m1" -o "config=$W/conf,max_read=4096"
refused "-o max_read=4096, mount -t fuse.azaionfs" "$W/m1" "maximum read size" -- \
	mount_t azaion "$W/m1" -o "config=$W/conf,max_read=4096"
check_eq "  no daemon is left" "$(daemon_of "$W/m1")" ""

# ---- offline format 1: the small part kept in state_dir
fs_conf "$W/f1.conf" "cdn_url=$NGINX_URL" "folder=$F" \
	"state_dir=$W/state-f1" "io_timeout=3" "catalog_ttl=1" "rest_listen=unix:$W/rest-f1.sock"
fs_mount "$W/m1" "$W/f1.conf"
wait_for 20 test -e "$W/m1/$A" || bail "the mount does not list $A"
check_eq "online: format 1 $A reads whole" "$(sha_of "$W/m1/$A" 2>&1)" "$(sha_of "$W/$A")"
fs_umount "$W/m1" "$FS_PID"
kept=$(find "$W/state-f1/small" -type f -name '*.small' 2>/dev/null)
check_eq "its small part is kept, one file under state_dir/small" "$(wc -l <<<"$kept")" 1
check_eq "  beside its chunk hashes (4 + 32 bytes a chunk)" \
	"$(find "$W/state-f1/small" -type f -name '*.hashes' -size +35c | wc -l)" 1
check_eq "  nothing else there, everything 0600" \
	"$(find "$W/state-f1/small" -type f ! -perm 600 | wc -l) $(ls "$W/state-f1/small" | wc -l)" "0 2"
check_eq "  mode 0600" "$(stat -c %a "$kept" 2>/dev/null)" 600
check_eq "  the API's bytes (encrypted), not the plaintext's start" \
	"$(cmp -s -n "$(stat -c %s "$kept")" "$kept" "$W/$A" && echo plain || echo cipher)" cipher
fp_fault API '{"kind": "refuse", "count": -1}'
fs_mount "$W/m1" "$W/f1.conf"
check "API refused: an offline start" grep -q "offline start" "$W/m1.log"
check_eq "API refused: format 1 $A reads again, the same bytes" \
	"$(sha_of "$W/m1/$A" 2>&1)" "$(sha_of "$W/$A")"
check "  the log says the kept small part served" \
	grep -q "$A: the API is out of reach.*small part kept in state_dir" "$W/m1.log"
check "  and the kept chunk hashes" \
	grep -q "$A: the API is out of reach.*chunk hashes kept in state_dir" "$W/m1.log"
fs_umount "$W/m1" "$FS_PID"
fp_clear API
fp_fault API '{"kind": "status", "status": 404, "count": -1, "path": "/resources/get/"}'
fs_mount "$W/m1" "$W/f1.conf"
wait_for 20 test -e "$W/m1/$A"
check "the API answers 404 for the small part: the read fails" \
	sh -c "! cat '$W/m1/$A' >/dev/null 2>&1"
check "  the kept small part is removed" test ! -e "$kept"
check "  the log says so" grep -q "$A: the API no longer gives its small part; the kept copy is removed" "$W/m1.log"
fs_umount "$W/m1" "$FS_PID"
fp_clear API

fs_no_leftovers
done_testing
