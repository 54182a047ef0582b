#!/usr/bin/env bash
# 82-container: the container deployment of scripts/container.
#  - make-rootfs and the Dockerfile build the image with the stack's dockerd,
#    from the local root filesystem alone (no base image, no registry);
#  - the daemon runs in a container with /dev/fuse, SYS_ADMIN and IPC_LOCK,
#    a host folder bind-mounted at /run/azaion with rshared propagation: its
#    FUSE mount shows on the host;
#  - a second container that bind-mounts HOST/models read-only reads a model
#    whose sha256 is the plaintext's; as user 65534 it reads only as a
#    member of the group azaion (the image's allow_other,default_permissions);
#  - docker stop unmounts (SIGTERM), the container exits 0, nothing is left.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need tar ldd mount umount
fs_init t82
[ -n "${DOCKER_SOCK:-}" ] && [ -S "$DOCKER_SOCK" ] || bail "the stack's dockerd is not running"
[ -x /usr/bin/docker ] || bail "missing prerequisite: /usr/bin/docker"
dk() { DOCKER_BUILDKIT=0 /usr/bin/docker -H "unix://$DOCKER_SOCK" "$@"; }
IMAGE=azaion-test/azaionfs:$TAG
NAME=azaionfs-$TAG
H=$W/run-azaion

cleanup82() {
	dk rm -f "$NAME" >/dev/null 2>&1
	dk image rm -f "$IMAGE" >/dev/null 2>&1
	if grep -q " $H/models " /proc/mounts; then umount -l "$H/models" 2>/dev/null; fi
	if grep -q " $H " /proc/mounts; then umount -l "$H" 2>/dev/null; fi
	fs_cleanup
}
trap cleanup82 EXIT

# ---- the image, from the local root filesystem
mkdir -p "$W/ctx"
cp "$AZ_TOP/scripts/container/Dockerfile" "$W/ctx/"
out=$("$AZ_TOP/scripts/container/make-rootfs" "$AZ_BUILD" "$W/ctx/rootfs.tar" 2>&1)
check "make-rootfs writes the root filesystem ($out)" test -s "$W/ctx/rootfs.tar"
check "it holds the daemon, its loader and the TPM device TCTI" sh -c \
	"tar -tf '$W/ctx/rootfs.tar' | grep -q '^./usr/sbin/azaionfs\$' &&
	 tar -tf '$W/ctx/rootfs.tar' | grep -q 'ld-linux' &&
	 tar -tf '$W/ctx/rootfs.tar' | grep -q 'libtss2-tcti-device.so.0\$'"
out=$(dk build -q -t "$IMAGE" "$W/ctx" 2>&1)
rc=$?
[ $rc -eq 0 ] || echo "$out" | sed 's/^/# /'
check "docker build with the repository's Dockerfile succeeds" test $rc -eq 0
out=$(dk run --rm --network none "$IMAGE" --version 2>&1)
case $out in "azaionfs "*) ok "the image runs the daemon ($out)" ;;
*) not_ok "the image runs the daemon: '$out'" ;; esac

# ---- configuration, in a folder the container mounts at /etc/azaion
F=c82$TAG
M=${TAG}-c.onnx
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache"
head -c 700001 /dev/urandom >"$W/$M"
fs_publish "$W/conf" 1 "$M" "$W/$M" || bail "publishing failed: $(tail -3 "$W/publish.log")"
E=$W/etc-azaion
# The side endpoint on a free port of the host's loopback: the image's
# HEALTHCHECK (azaionctl health, same configuration) asks it.
HPORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$E"
cp "$STACK_CA" "$E/ca.pem"
(umask 077 && cp "$W/creds" "$E/credentials")
cat >"$E/azaionfs.conf" <<EOF
api_url = $API_URL
cdn_url = $NGINX_URL
ca_file = /etc/azaion/ca.pem
credentials = /etc/azaion/credentials
hardware_id = azaionfs-test-hardware
folder = $F
tpm = off
rest_listen = 127.0.0.1:$HPORT
EOF

# ---- the host folder, a shared mount point (rshared needs one)
mkdir -p "$H/models"
mount --bind "$H" "$H" && mount --make-rshared "$H" || bail "cannot make $H a shared mount"

# ---- the daemon's container
out=$(dk run -d --name "$NAME" --network host --device /dev/fuse --cap-add SYS_ADMIN \
	--cap-add IPC_LOCK --security-opt apparmor=unconfined \
	-v "$H:/run/azaion:rshared" -v "$E:/etc/azaion:ro" "$IMAGE" 2>&1)
rc=$?
[ $rc -eq 0 ] || echo "$out" | sed 's/^/# /'
check "the daemon's container starts" test $rc -eq 0
if ! wait_for 30 fs_mounted "$H/models"; then
	dk logs "$NAME" 2>&1 | tail -20 | sed 's/^/# /'
fi
check "its mount propagates to the host at $H/models" fs_mounted "$H/models"
check_eq "the host lists the model" "$(ls "$H/models" 2>&1)" "$M"

# ---- an inference container reads a model through the propagated mount
got=$(dk run --rm --network none -v "$H/models:/models:ro" "$DOCKER_TEST_IMAGE" \
	sha256sum "/models/$M" 2>&1 | cut -d' ' -f1)
check_eq "a second container reads the model; sha256 matches the plaintext" "$got" "$(sha_of "$W/$M")"
check_eq "so does the host" "$(sha_of "$H/models/$M" 2>&1)" "$(sha_of "$W/$M")"
gid=$(getent group azaion | cut -d: -f3)
got=$(dk run --rm --network none --user 65534:65534 --group-add "$gid" \
	-v "$H/models:/models:ro" "$DOCKER_TEST_IMAGE" sha256sum "/models/$M" 2>&1 | cut -d' ' -f1)
check_eq "a container of user 65534 in the group azaion ($gid) reads it (the image's default mount)" \
	"$got" "$(sha_of "$W/$M")"
out=$(dk run --rm --network none --user 65534:65534 -v "$H/models:/models:ro" \
	"$DOCKER_TEST_IMAGE" cat "/models/$M" 2>&1 >/dev/null)
case $out in *"Permission denied"*) ok "one outside the group is refused ($out)" ;;
*) not_ok "one outside the group is refused: '$out'" ;; esac
check_eq "the image's HEALTHCHECK runs azaionctl health" \
	"$(dk inspect -f '{{json .Config.Healthcheck.Test}}' "$IMAGE" 2>&1)" \
	'["CMD","/usr/bin/azaionctl","health"]'
healthy() { [ "$(dk inspect -f '{{.State.Health.Status}}' "$NAME" 2>&1)" = healthy ]; }
check "and the container turns healthy (docker inspect)" wait_for 40 healthy
check "the container's log is the daemon's stderr" \
	sh -c "/usr/bin/docker -H 'unix://$DOCKER_SOCK' logs '$NAME' 2>&1 | grep -q 'mounted azaion at /run/azaion/models'"

# ---- docker stop: SIGTERM unmounts
dk stop -t 20 "$NAME" >/dev/null 2>&1
check_eq "after docker stop the container exited with 0" \
	"$(dk inspect -f '{{.State.ExitCode}}' "$NAME" 2>&1)" 0
check "and the mount is gone from the host" wait_for 10 sh -c "! grep -q ' $H/models ' /proc/mounts"
dk rm -f "$NAME" >/dev/null 2>&1
umount "$H" 2>/dev/null
fs_no_leftovers
done_testing
