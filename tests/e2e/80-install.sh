#!/usr/bin/env bash
# 80-install: `make install` as an operator runs it.
#  - into a DESTDIR staging folder with PREFIX=/usr: the daemon in sbin, the
#    tool in bin, the man pages, the systemd unit pointing at the installed
#    daemon, the commented configuration; an existing configuration is kept;
#    `make uninstall` removes what install put there, and only that;
#  - the configuration lists every key of the table (each one a key the
#    daemon knows, the defaults loadable as a file), and the man page and
#    the README name them all;
#  - the man pages format without a warning (man --warnings);
#  - the unit passes systemd-analyze verify, and has none of the settings
#    that would hide the mount in a private mount namespace;
#  - for real, into / with the default PREFIX: mount -t fuse.azaionfs finds
#    the installed daemon; the machine is put back afterwards.
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need make man systemd-analyze install sed mount umount
fs_init t80

# Every key of the configuration table.
KEYS="api_url cdn_url s3_access_key s3_secret_key_file s3_region folder models ca_file
 credentials hardware_id legacy_resource_secret_file tpm tpm_tcti tpm_pcrs tpm_owner_auth_file
 tpm_wait state_dir cache_dir cache_max memory_cache catalog_ttl io_timeout readahead_max
 rest_listen rest_public rest_hosts rest_upload rest_group rest_token_file metrics_listen
 images_archive images_resource images images_version docker_socket
 log_level log_file"
KEYS="$KEYS memory_lock kernel_resend"

# The build is the suite's: install must not rebuild it.
inst() {
	make -s -C "$AZ_TOP" BUILD="$AZ_BUILD" -o "$AZ_BUILD/azaionfs" -o "$AZ_BUILD/azaionctl" "$@"
}

# ---- staging install, PREFIX=/usr
S=$W/stage
inst install DESTDIR="$S" PREFIX=/usr >"$W/install.log" 2>&1 ||
	{ sed 's/^/# /' "$W/install.log"; bail "make install DESTDIR=... failed"; }
mode() { stat -c %a "$1" 2>/dev/null; }
check_eq "azaionfs in /usr/sbin, mode 755" "$(mode "$S/usr/sbin/azaionfs")" 755
check_eq "azaionctl in /usr/bin, mode 755" "$(mode "$S/usr/bin/azaionctl")" 755
check "the installed daemon is the build's" cmp -s "$S/usr/sbin/azaionfs" "$AZ_BUILD/azaionfs"
check_eq "azaionfs(8) installed" "$(mode "$S/usr/share/man/man8/azaionfs.8")" 644
check_eq "azaionctl(1) installed" "$(mode "$S/usr/share/man/man1/azaionctl.1")" 644
check_eq "azaionfs.conf(5) installed" "$(mode "$S/usr/share/man/man5/azaionfs.conf.5")" 644
U=$S/usr/lib/systemd/system/azaionfs.service
check_eq "the unit in /usr/lib/systemd/system" "$(mode "$U")" 644
check_eq "its ExecStart runs the installed daemon" \
	"$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' "$U")" /usr/sbin/azaionfs
check "the configuration in /etc/azaion" cmp -s "$S/etc/azaion/azaionfs.conf" "$AZ_TOP/azaionfs.conf"
echo "# operator's" >"$S/etc/azaion/azaionfs.conf"
inst install DESTDIR="$S" PREFIX=/usr >/dev/null 2>&1
check_eq "a second install keeps the operator's configuration" \
	"$(cat "$S/etc/azaion/azaionfs.conf")" "# operator's"
inst uninstall DESTDIR="$S" PREFIX=/usr >/dev/null 2>&1
check_eq "make uninstall leaves only the configuration" \
	"$(cd "$S" && find . -type f | sort | tr '\n' ' ')" "./etc/azaion/azaionfs.conf "

# ---- the configuration file documents every key
conf=$AZ_TOP/azaionfs.conf
missing=""
for k in $KEYS; do
	grep -qE "^#?$k =( |$)" "$conf" || missing="$missing $k"
done
check_eq "azaionfs.conf lists every key" "$missing" ""
unknown=""
for k in $(sed -n 's/^#\([a-z0-9_]*\) =\( .*\)\{0,1\}$/\1/p' "$conf"); do
	"$AZ_CTL" -o "$k=x" hw 2>&1 | grep -q "unknown key" && unknown="$unknown $k"
done
check_eq "every key in azaionfs.conf is one the daemon knows" "$unknown" ""
sed -n 's/^#\([a-z0-9_]*\) = \(..*\)$/\1 = \2/p' "$conf" >"$W/defaults.conf"
out=$("$AZ_CTL" -c "$W/defaults.conf" hw 2>&1)
check "its defaults, uncommented, load ($(echo "$out" | tail -1))" test $? -eq 0
missing=""
for k in $KEYS; do
	grep -E '^\.BR? ' "$AZ_TOP/man/azaionfs.8" | grep -qw -- "$k" || missing="$missing $k"
done
check_eq "azaionfs(8) describes every key" "$missing" ""
missing=""
for k in $KEYS; do
	grep -q "\`$k\`" "$AZ_TOP/README.md" || missing="$missing $k"
done
check_eq "the README's configuration reference names every key" "$missing" ""

# ---- man pages
for m in man/azaionfs.8 man/azaionctl.1; do
	warn=$(man --warnings -l "$AZ_TOP/$m" 2>&1 >/dev/null)
	check_eq "man --warnings $m: no warning" "$warn" ""
	check "$m renders its NAME section" sh -c "man -l '$AZ_TOP/$m' 2>/dev/null | grep -q '^NAME'"
done

# ---- the unit: no private mount namespace (it would hide the mount)
unit=$AZ_TOP/scripts/azaionfs.service
ns=$(grep -E '^(ProtectSystem|ProtectHome|PrivateTmp|PrivateDevices|PrivateMounts|PrivateNetwork|ProtectKernelTunables|ProtectKernelModules|ProtectKernelLogs|ProtectControlGroups|ProtectProc|ProcSubset|ReadWritePaths|ReadOnlyPaths|InaccessiblePaths|BindPaths|BindReadOnlyPaths|TemporaryFileSystem|RootDirectory|RootImage|MountFlags|PrivateIPC|RuntimeDirectory|StateDirectory|CacheDirectory)=' "$unit")
check_eq "the unit sets nothing that makes a private mount namespace" "$ns" ""
for d in Restart=on-failure NoNewPrivileges=yes LimitMEMLOCK= CapabilityBoundingSet= \
	DeviceAllow=/dev/fuse "After=network-online.target" "After=tee-supplicant.service"; do
	check "the unit has $d" grep -q "^$d" "$unit"
done

# ---- for real: install into / with the default PREFIX, then put the
# machine back as it was
SYSFILES="/usr/local/sbin/azaionfs /usr/local/bin/azaionctl /usr/local/share/man/man8/azaionfs.8
 /usr/local/share/man/man1/azaionctl.1 /usr/local/share/man/man5/azaionfs.conf.5
 /usr/local/lib/systemd/system/azaionfs.service
 /etc/azaion/azaionfs.conf"
mkdir -p "$W/saved"
created_dirs=""
for d in /etc/azaion /usr/local/lib/systemd/system /usr/local/share/man/man8 \
	/usr/local/share/man/man1 /usr/local/share/man/man5; do
	[ -d "$d" ] || created_dirs="$d $created_dirs"
done
restore_system() {
	local f s
	for f in $SYSFILES; do
		rm -f "$f"
		s=$W/saved/$(echo "$f" | tr / _)
		if [ -e "$s" ] || [ -L "$s" ]; then mv "$s" "$f"; fi
	done
	for f in $created_dirs; do rmdir "$f" 2>/dev/null; done
}
trap 'restore_system; fs_cleanup' EXIT
# state_of FILE...: one line per file, its sha256 or "absent".
state_of() {
	local f
	for f in "$@"; do
		if [ -e "$f" ]; then echo "$f $(sha_of "$f")"; else echo "$f absent"; fi
	done
}
before=$(state_of $SYSFILES)
for f in $SYSFILES; do
	if [ -e "$f" ] || [ -L "$f" ]; then
		mv "$f" "$W/saved/$(echo "$f" | tr / _)" || bail "cannot move $f aside"
	fi
done
inst install >"$W/install-root.log" 2>&1 ||
	{ sed 's/^/# /' "$W/install-root.log"; bail "make install failed"; }
check_eq "make install puts azaionfs in /usr/local/sbin" "$(mode /usr/local/sbin/azaionfs)" 755
check_eq "man finds azaionfs(8) where it was installed" \
	"$(readlink -f "$(man -w 8 azaionfs 2>/dev/null)")" /usr/local/share/man/man8/azaionfs.8
out=$(systemd-analyze verify /usr/local/lib/systemd/system/azaionfs.service 2>&1)
rc=$?
[ -n "$out" ] && echo "$out" | sed 's/^/# /'
check "systemd-analyze verify accepts the installed unit" test "$rc" -eq 0 -a -z "$out"

# mount(8) runs mount.fuse3 with a fixed PATH; it must find the installed daemon.
F=i80$TAG
M=${TAG}-m.onnx
fs_conf "$W/conf" "cdn_url=$NGINX_URL" "folder=$F" "state_dir=$W/state" "cache_dir=$W/cache"
head -c 100001 /dev/urandom >"$W/$M"
fs_publish "$W/conf" 1 "$M" "$W/$M" || bail "publishing failed: $(tail -3 "$W/publish.log")"
mkdir -p "$W/m1"
out=$(env -i /bin/mount -t fuse.azaionfs azaion "$W/m1" -o "config=$W/conf" 2>&1)
fs_mounted "$W/m1" || echo "$out" | sed 's/^/# /'
check "mount -t fuse.azaionfs runs the installed daemon" fs_mounted "$W/m1"
pid=$(pgrep -f -- "azaionfs azaion $W/m1( |$)" | head -1)
FS_PIDS+=(${pid:-}) FS_MNTS+=("$W/m1")
check_eq "the process is /usr/local/sbin/azaionfs" \
	"$(readlink "/proc/${pid:-0}/exe" 2>/dev/null)" /usr/local/sbin/azaionfs
check_eq "it reads a model" "$(sha_of "$W/m1/$M" 2>&1)" "$(sha_of "$W/$M")"
umount "$W/m1"
check "after umount the daemon exits" wait_for 10 fs_gone "${pid:-0}"

restore_system
trap 'fs_cleanup' EXIT
check_eq "the machine is put back as it was" "$(state_of $SYSFILES)" "$before"
fs_no_leftovers
done_testing
