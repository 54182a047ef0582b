#!/usr/bin/env bash
# 20-fs-read: models of both formats on both CDNs (nginx, and S3 through
# cdn.yaml), published with azaionctl and read through real mounts: cat and
# mmap give the plaintext's sha256, ls -l the plaintext sizes, thousands of
# random preads from several threads the plaintext's bytes; writes get
# EROFS; a container of the stack's dockerd reads a model through a bind
# mount; and afterwards no file the test or the daemons wrote, nor the CDNs'
# and the API's data, holds any 32-byte window of any plaintext.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need cc /usr/bin/docker
fs_init t20

# nginx models live in their own folder; S3's bucket is "models". One
# state_dir: the device enrols once. One TPM user at a time: swtpm has no
# resource manager, so two daemons would compete for its object slots.
NF=n20$TAG
fs_conf "$W/nginx.conf" "cdn_url=$NGINX_URL" "folder=$NF" "state_dir=$W/state" \
	"cache_dir=$W/cache-n" "cache_max=64M" "tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5"
fs_conf "$W/s3.conf" "folder=models" "state_dir=$W/state" "cache_dir=$W/cache-s" \
	"tpm=auto" "tpm_tcti=$TPM_TCTI" "tpm_wait=5" "catalog_ttl=1"

# Sizes: one byte, not a multiple of 16, a multiple of 16, a few MiB.
sizes=(1 100003 1048576 3500001)
names=()
mkdir -p "$W/plain"
for cdn in nginx s3; do
	for fmt in 1 2; do
		for s in "${sizes[@]}"; do
			n=${TAG}-$cdn-f$fmt-$s.onnx
			head -c "$s" /dev/urandom >"$W/plain/$n"
			names+=("$cdn:$n")
		done
	done
done

# The first mount enrols the device; the models are published after it.
fs_mount "$W/mnt-s" "$W/s3.conf"
pid_s=$FS_PID
check "the first mount enrolled the device" test -s "$W/state/device_id"
for e in "${names[@]}"; do
	cdn=${e%%:*} n=${e#*:}
	fmt=${n#*-f}
	fmt=${fmt%%-*}
	fs_publish "$W/$cdn.conf" "$fmt" "$n" "$W/plain/$n" ||
		bail "publishing $n failed: $(tail -3 "$W/publish.log")"
done
ok "azaionctl published ${#names[@]} models"
check "the running mount's catalog refresh (catalog_ttl = 1) lists the new models" \
	wait_for 15 test -e "$W/mnt-s/${TAG}-s3-f2-3500001.onnx"

# read_all CDN: cat, mmap and stat of every model of that CDN.
read_all() {
	local cdn=$1 e n m want got want_ls
	local bad_cat=() bad_mmap=() bad_size=()
	for e in "${names[@]}"; do
		[ "${e%%:*}" = "$cdn" ] || continue
		n=${e#*:}
		m=$W/mnt-${cdn:0:1}/$n
		want=$(sha_of "$W/plain/$n")
		[ "$(sha_of "$m" 2>/dev/null)" = "$want" ] || bad_cat+=("$n")
		[ "$(mmap_sha "$m" 2>/dev/null)" = "$want" ] || bad_mmap+=("$n")
		[ "$(stat -c %s "$m" 2>/dev/null)" = "$(stat -c %s "$W/plain/$n")" ] ||
			bad_size+=("$n")
	done
	check_eq "$cdn, cat: every model's sha256 equals its plaintext's" "${bad_cat[*]}" ""
	check_eq "$cdn, mmap: every model's sha256 equals its plaintext's" "${bad_mmap[*]}" ""
	check_eq "$cdn, stat: every model shows its plaintext size" "${bad_size[*]}" ""
	got=$(ls -l "$W/mnt-${cdn:0:1}" | awk -v t="$TAG-$cdn-" 'index($9, t) == 1 {print $5, $9}' |
		sort)
	want_ls=$(for e in "${names[@]}"; do
		[ "${e%%:*}" = "$cdn" ] && echo "$(stat -c %s "$W/plain/${e#*:}") ${e#*:}"
	done | sort)
	check_eq "$cdn, ls -l: the models with their plaintext sizes" "$got" "$want_ls"
}

# preads NAME: thousands of random preads from several threads.
preads() {
	local n=$1 cdn out
	cdn=${n#*-}
	cdn=${cdn%%-*}
	out=$("$PY" "$AZ_TOP/tests/tools/preads.py" "$W/plain/$n" "$W/mnt-${cdn:0:1}/$n" 6 1000)
	check_eq "6000 random preads of $n from 6 threads equal the plaintext" "$out" "6000 0"
}

read_all s3
preads "${TAG}-s3-f1-3500001.onnx"
preads "${TAG}-s3-f2-3500001.onnx"

# A container of the stack's dockerd reads a model through a bind mount.
n=${TAG}-s3-f2-1048576.onnx
got=$(/usr/bin/docker -H "unix://$DOCKER_SOCK" run --rm --network none \
	-v "$W/mnt-s:/models:ro" "$DOCKER_TEST_IMAGE" sha256sum "/models/$n" 2>&1 | cut -d' ' -f1)
check_eq "a container reads $n through -v MOUNT:/models:ro" "$got" "$(sha_of "$W/plain/$n")"
fs_umount "$W/mnt-s" "$pid_s"

fs_mount "$W/mnt-n" "$W/nginx.conf"
pid_n=$FS_PID
read_all nginx
preads "${TAG}-nginx-f1-3500001.onnx"
preads "${TAG}-nginx-f2-3500001.onnx"

# Read-only.
err=$( (echo x >"$W/mnt-n/new-file") 2>&1)
case $err in *"Read-only file system"*) ok "creating a file fails with EROFS" ;;
*) not_ok "creating a file: '$err'" ;; esac
err=$( (echo x >>"$W/mnt-n/${TAG}-nginx-f1-1.onnx") 2>&1)
case $err in *"Read-only file system"*) ok "writing to a model fails with EROFS" ;;
*) not_ok "writing to a model: '$err'" ;; esac
err=$(rm -f "$W/mnt-n/${TAG}-nginx-f1-1.onnx" 2>&1)
case $err in *"Read-only file system"*) ok "removing a model fails with EROFS" ;;
*) not_ok "removing a model: '$err'" ;; esac
fs_umount "$W/mnt-n" "$pid_n"

# Canary: no 32-byte window of any plaintext in anything the test, the
# daemons or the servers wrote. The plaintexts themselves are the only
# exception, so they are kept apart while the rest is scanned.
cc -O2 -o "$W/canary" "$AZ_TOP/tests/tools/canary.c" || bail "cannot build the canary scanner"
hits=$("$W/canary" "$W"/plain/* -- "$W/state" "$W/cache-n" "$W/cache-s" "$W/mnt-n" "$W/mnt-s" \
	"$W/nginx.conf" "$W/s3.conf" "$W/publish.log" "$W"/mnt-*.log "$CDN_ROOT" \
	"${S3_DATA:-/nonexistent}" "$API_DATA" 2>&1)
check_eq "canary: no plaintext window in state_dir, cache_dir, logs, CDN or API data" "$hits" ""
check "the disk caches hold ciphertext blocks" test -n "$(ls "$W/cache-n")"
bad_modes=$(find "$W/state" "$W/cache-n" "$W/cache-s" -type f -perm /077)
check_eq "files in state_dir and cache_dir are 0600" "$bad_modes" ""

fs_no_leftovers
done_testing
