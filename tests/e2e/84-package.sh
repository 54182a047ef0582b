#!/usr/bin/env bash
# 84-package: the Debian package (debian/) as an operator installs it.
#  - `make deb` builds azaionfs_VERSION_amd64.deb from the tree, `make
#    deb-arm64` the arm64 one with the cross compiler (aarch64 binaries);
#    lintian reports no error and no warning on either;
#  - dpkg -i on this machine: the daemon in /usr/sbin (where mount.fuse3
#    finds it), the tool in /usr/bin, three man pages, the unit (installed,
#    not enabled), /etc/azaion/azaionfs.conf as a conffile, the group
#    azaion, /var/lib/azaionfs and /var/cache/azaionfs mode 0700;
#    azaionfs.conf(5) names every key of the configuration table;
#  - with the configuration pointed at the local stack, mount -t
#    fuse.azaionfs runs the installed daemon, which reads a model;
#  - an upgrade (dpkg -i again) keeps the changed configuration and the
#    running mount;
#  - dpkg -r keeps the changed configuration, the state and the cache;
#    dpkg -P removes them and keeps the group;
#  - the machine is put back as it was (files the test moves aside come
#    back, the package is purged on any exit).
. "$(dirname "$0")/../lib.sh"
. "$AZ_TOP/tests/tools/fs-lib.sh"
need make dpkg dpkg-deb dpkg-query dpkg-buildpackage dh lintian file mount umount \
	aarch64-linux-gnu-gcc aarch64-linux-gnu-pkg-config systemd-analyze man
fs_init t84

# status_of: ii (installed), rc (removed, its configuration kept) or empty.
status_of() {
	local s
	s=$(dpkg-query -W -f='${db:Status-Abbrev}' azaionfs 2>/dev/null | tr -d ' ')
	case $s in un | pn) s="" ;; esac
	echo "$s"
}
st=$(status_of)
[ -z "$st" ] || bail "the package azaionfs is already on this machine ($st): the test would replace it"
UNIT=$(pkg-config --variable=systemdsystemunitdir systemd)/azaionfs.service

# ---- the two packages
VER=$(cd "$AZ_TOP" && dpkg-parsechangelog -S Version)
for a in amd64 arm64; do
	tgt=deb
	[ $a = arm64 ] && tgt=deb-arm64
	start=$SECONDS
	make -s -C "$AZ_TOP" "$tgt" >"$W/build-$a.log" 2>&1
	rc=$?
	[ $rc -eq 0 ] || tail -25 "$W/build-$a.log" | sed 's/^/# /'
	echo "# make $tgt: $((SECONDS - start)) s"
	check "make $tgt builds the $a package" test $rc -eq 0
done
DEB=$AZ_TOP/build-deb/azaionfs_${VER}_amd64.deb
DEB64=$AZ_TOP/build-deb-arm64/azaionfs_${VER}_arm64.deb
[ -f "$DEB" ] || bail "no $DEB"
[ -f "$DEB64" ] || bail "no $DEB64"
for d in "$DEB" "$DEB64"; do
	out=$(lintian "$d" 2>/dev/null)
	echo "$out" | grep -v '^$' | sed 's/^/# /'
	check_eq "lintian: no error and no warning on $(basename "$d")" \
		"$(echo "$out" | grep -cE '^[EW]: ')" 0
done

field() { dpkg-deb -f "$1" "$2"; }
check_eq "the amd64 package is Architecture: amd64" "$(field "$DEB" Architecture)" amd64
check_eq "the arm64 package is Architecture: arm64" "$(field "$DEB64" Architecture)" arm64
contents() { dpkg-deb -c "$1" | awk '{print $6}' | sed 's|^\./|/|' | sort; }
check_eq "both packages hold the same files" "$(contents "$DEB64")" "$(contents "$DEB")"
mkdir -p "$W/x64"
dpkg-deb -x "$DEB64" "$W/x64"
for b in usr/sbin/azaionfs usr/bin/azaionctl; do
	check_eq "arm64 /$b is an aarch64 ELF executable" \
		"$(file -b "$W/x64/$b" | grep -oE '^ELF 64-bit LSB pie executable, ARM aarch64')" \
		"ELF 64-bit LSB pie executable, ARM aarch64"
done
check "the arm64 package depends on fuse3 and adduser" \
	sh -c "dpkg-deb -f '$DEB64' Depends | grep -q 'adduser, fuse3'"

# ---- what the test moves aside, and puts back on any exit
SAVE=t84-saved-$$
ASIDE="/usr/local/sbin/azaionfs /etc/azaion/azaionfs.conf /var/lib/azaionfs /var/cache/azaionfs"
aside_of() { echo "$(dirname "$1")/.$(basename "$1").$SAVE"; }
# state_of PATH...: one line per path, what it is now.
state_of() {
	local p
	for p in "$@"; do
		if [ -L "$p" ]; then echo "$p link $(readlink "$p")"
		elif [ -d "$p" ]; then echo "$p dir $(stat -c %a "$p") $(find "$p" | wc -l)"
		elif [ -e "$p" ]; then echo "$p $(sha_of "$p")"
		else echo "$p absent"; fi
	done
}
WATCH="$ASIDE /etc/azaion /usr/sbin/azaionfs /usr/bin/azaionctl $UNIT /usr/share/man/man5/azaionfs.conf.5.gz"
before=$(state_of $WATCH)
put_back() {
	local p a
	[ -n "$(status_of)" ] && dpkg -P azaionfs >/dev/null 2>&1
	for p in $ASIDE; do
		a=$(aside_of "$p")
		if [ -e "$a" ] || [ -L "$a" ]; then
			rm -rf "$p"
			mv "$a" "$p"
		fi
	done
	[ -n "$etc_created" ] && rmdir /etc/azaion 2>/dev/null
	return 0
}
etc_created=""
[ -d /etc/azaion ] || etc_created=1
trap 'FS_KEEP=1 fs_cleanup; put_back; rm -rf "$W"' EXIT
for p in $ASIDE; do
	if [ -e "$p" ] || [ -L "$p" ]; then
		mv "$p" "$(aside_of "$p")" || bail "cannot move $p aside"
	fi
done

# ---- install
out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" 2>&1)
rc=$?
echo "$out" | sed 's/^/# /'
check "dpkg -i installs the package" test $rc -eq 0
[ "$(status_of)" = ii ] || bail "the package is not installed ($(status_of))"
L=$(dpkg -L azaionfs)
for f in /usr/sbin/azaionfs /usr/bin/azaionctl /usr/share/man/man8/azaionfs.8.gz \
	/usr/share/man/man1/azaionctl.1.gz /usr/share/man/man5/azaionfs.conf.5.gz \
	$UNIT /etc/azaion/azaionfs.conf \
	/usr/share/doc/azaionfs/copyright; do
	check "dpkg -L lists $f, and it is there" sh -c "echo '$L' | grep -qx '$f' && test -f '$f'"
done
check_eq "/etc/azaion/azaionfs.conf is a conffile" \
	"$(dpkg-query -W -f='${Conffiles}' azaionfs | awk '{print $1}')" /etc/azaion/azaionfs.conf
check "the installed configuration is the tree's" cmp -s /etc/azaion/azaionfs.conf "$AZ_TOP/azaionfs.conf"
check "the group azaion exists" sh -c "getent group azaion >/dev/null"
# What a clean system would lack: every library the two programs link
# (DT_NEEDED) must come from a package that Depends names.
deps=$(dpkg-deb -f "$DEB" Depends)
missing=""
for lib in $(objdump -p /usr/sbin/azaionfs /usr/bin/azaionctl | awk '/NEEDED/{print $2}' | sort -u); do
	pkg=$(dpkg -S "*/$lib" 2>/dev/null | head -1 | cut -d: -f1)
	[ -n "$pkg" ] || { missing="$missing $lib(no package)"; continue; }
	echo "$deps" | grep -Eq "(^|, )$pkg( |,|$)" || missing="$missing $lib($pkg)"
done
check_eq "Depends names the package of every linked library" "$missing" ""
for d in /var/lib/azaionfs /var/cache/azaionfs; do
	check_eq "$d is there, mode 700, root's" "$(stat -c '%a %U' "$d" 2>&1)" "700 root"
done
check_eq "the installed daemon answers --version" \
	"$(/usr/sbin/azaionfs --version 2>&1 | head -1 | cut -d' ' -f1-2)" "azaionfs $VER"
check_eq "the unit runs /usr/sbin/azaionfs" \
	"$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' $UNIT)" /usr/sbin/azaionfs
out=$(systemd-analyze verify $UNIT 2>&1)
[ -n "$out" ] && echo "$out" | sed 's/^/# /'
check "systemd-analyze verify accepts the installed unit" test -z "$out"
check "the unit is not enabled at install (its configuration needs review first)" \
	test ! -e /etc/systemd/system/multi-user.target.wants/azaionfs.service
for m in man8/azaionfs.8 man1/azaionctl.1 man5/azaionfs.conf.5; do
	warn=$(man --warnings -l "/usr/share/man/$m.gz" 2>&1 >/dev/null)
	check_eq "man --warnings $m.gz: no warning" "$warn" ""
done

missing=""
for k in $(sed -n 's/^\tK(\([a-z0-9_]*\),.*/\1/p' "$AZ_TOP/fs/config.c"); do
	zcat /usr/share/man/man5/azaionfs.conf.5.gz | grep -E '^\.BR? ' | grep -qw -- "$k" ||
		missing="$missing $k"
done
check_eq "azaionfs.conf(5) describes every key of the configuration table" "$missing" ""
check "azaionfs.conf(5) has a DIAGNOSTICS section" \
	sh -c "zcat /usr/share/man/man5/azaionfs.conf.5.gz | grep -q '^\.SH DIAGNOSTICS'"

# ---- as an operator: the configuration pointed at the stack, then mount
F=p84$TAG
M=${TAG}-pkg.onnx
fs_conf "$W/stack.conf" "cdn_url=$NGINX_URL" "folder=$F" "rest_listen=unix:$W/rest.sock"
cp "$W/stack.conf" /etc/azaion/azaionfs.conf
head -c 200003 /dev/urandom >"$W/$M"
fs_publish "$W/stack.conf" 1 "$M" "$W/$M" || bail "publishing failed: $(tail -3 "$W/publish.log")"
mkdir -p "$W/m"
# mount(8) gives mount.fuse3 a fixed PATH; /usr/local/sbin is moved aside.
out=$(env -i /bin/mount -t fuse.azaionfs azaion "$W/m" -o config=/etc/azaion/azaionfs.conf 2>&1)
fs_mounted "$W/m" || echo "$out" | sed 's/^/# /'
FS_MNTS+=("$W/m")
check "mount -t fuse.azaionfs mounts" fs_mounted "$W/m"
pid=$(pgrep -f -- "azaionfs azaion $W/m( |$)" | head -1)
FS_PIDS+=(${pid:-})
check_eq "the process is the package's /usr/sbin/azaionfs" \
	"$(readlink "/proc/${pid:-0}/exe" 2>/dev/null)" /usr/sbin/azaionfs
check_eq "it reads the model" "$(sha_of "$W/m/$M" 2>&1)" "$(sha_of "$W/$M")"
check "its ciphertext landed in the default cache_dir /var/cache/azaionfs" \
	sh -c 'ls /var/cache/azaionfs | grep -q .'
# An upgrade (the same package again): the operator's configuration stays
# without a question, and the running mount is left alone.
out=$(DEBIAN_FRONTEND=noninteractive dpkg -i "$DEB" </dev/null 2>&1)
rc=$?
echo "$out" | sed 's/^/# /'
check "dpkg -i over the installed package (an upgrade)" test $rc -eq 0
check "the upgrade keeps the operator's configuration" \
	cmp -s /etc/azaion/azaionfs.conf "$W/stack.conf"
check "the upgrade leaves the running mount alone" kill -0 "${pid:-0}"
check_eq "which still reads the model" "$(sha_of "$W/m/$M" 2>&1)" "$(sha_of "$W/$M")"
umount "$W/m"
check "after umount the daemon exits" wait_for 10 fs_gone "${pid:-0}"

# ---- remove: configuration and state stay
out=$(dpkg -r azaionfs 2>&1)
rc=$?
echo "$out" | sed 's/^/# /'
check "dpkg -r removes the package" test $rc -eq 0
check_eq "its status is config-files" "$(status_of)" rc
check "the daemon is gone" test ! -e /usr/sbin/azaionfs
check "the tool is gone" test ! -e /usr/bin/azaionctl
check "the unit is gone" test ! -e $UNIT
check "the operator's configuration stays" cmp -s /etc/azaion/azaionfs.conf "$W/stack.conf"
check "the state folder stays" test -d /var/lib/azaionfs
check "the cache stays, with its files" sh -c 'ls /var/cache/azaionfs | grep -q .'

# ---- purge: gone, but the group
out=$(dpkg -P azaionfs 2>&1)
rc=$?
echo "$out" | sed 's/^/# /'
check "dpkg -P purges the package" test $rc -eq 0
check_eq "dpkg knows it no more" "$(status_of)" ""
check "the configuration is gone" test ! -e /etc/azaion/azaionfs.conf
check "the state folder is gone" test ! -e /var/lib/azaionfs
check "the cache is gone" test ! -e /var/cache/azaionfs
check "the group azaion stays (files and containers may carry its gid)" \
	sh -c "getent group azaion >/dev/null"

put_back
trap 'fs_cleanup' EXIT
check_eq "the machine is put back as it was" "$(state_of $WATCH)" "$before"
fs_no_leftovers
done_testing
