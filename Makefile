# azaionfs - plain Makefile. `make` builds build/azaionfs and build/azaionctl,
# `make test` runs the whole suite, `make asan` the same under ASan+UBSan.
# V=1 shows the commands.

# mount(8) gives mount.fuse3 the PATH /usr/local/sbin:/usr/local/bin:/usr/sbin:
# /usr/bin:/sbin:/bin, and mount.fuse3 runs the daemon by name: SBINDIR must be
# on it (the default, and PREFIX=/usr, are).
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
UNITDIR ?= $(PREFIX)/lib/systemd/system
BUILD ?= build
SAN ?=

# CC and PKG_CONFIG may come from the environment or the command line: a
# cross build passes aarch64-linux-gnu-gcc and aarch64-linux-gnu-pkg-config
# (dpkg-buildpackage -aarm64 does).
CC ?= cc
PKG_CONFIG ?= pkg-config
PKGS := fuse3 openssl libcurl jansson libmicrohttpd tss2-esys tss2-mu tss2-tctildr tss2-rc
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell $(PKG_CONFIG) --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes \
	-Wmissing-prototypes -Wno-unused-parameter
ifeq ($(SAN),1)
OPT := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined
SANLD := -fsanitize=address,undefined
else
OPT := -O2 -g -D_FORTIFY_SOURCE=2
SANLD :=
endif
CFLAGS ?=
CPPFLAGS ?=
LDFLAGS ?=
ALL_CFLAGS := -std=gnu11 $(OPT) $(WARN) -fstack-protector-strong -fPIE \
	-D_GNU_SOURCE -I. $(PKG_CFLAGS) $(CPPFLAGS) $(CFLAGS)
ALL_LDFLAGS := -pie -Wl,-z,relro,-z,now $(SANLD) $(LDFLAGS)
LIBS := $(PKG_LIBS) -lpthread

ifeq ($(V),1)
Q :=
else
Q := @
endif

# One library per folder; fs/main.c and fs/ctl.c are the two programs.
CRYPTO_SRC := $(wildcard crypto/*.c)
FETCH_SRC := $(wildcard fetch/*.c)
TPM_SRC := $(wildcard tpm/*.c)
FS_SRC := $(filter-out fs/main.c fs/ctl.c,$(wildcard fs/*.c))
TEST_SRC := $(wildcard tests/unit/test_*.c)

obj = $(patsubst %.c,$(BUILD)/%.o,$(1))
LIB_CRYPTO := $(BUILD)/libazcrypto.a
LIB_FETCH := $(BUILD)/libazfetch.a
LIB_TPM := $(BUILD)/libaztpm.a
LIB_FS := $(BUILD)/libazfs.a
# Users before what they use (a static link resolves left to right): fs uses
# all the others, tpm uses crypto (the sealed store's AES-256-GCM).
ALL_LIBS := $(LIB_FS) $(LIB_FETCH) $(LIB_TPM) $(LIB_CRYPTO)
TESTS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(TEST_SRC))

all: $(BUILD)/azaionfs $(BUILD)/azaionctl $(TESTS)

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  CC      $<")
	$(Q)$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

define lib_rule
$(1): $(call obj,$(2))
	@mkdir -p $$(dir $$@)
	$(Q)rm -f $$@ && ar rcs $$@ $$^
endef
$(eval $(call lib_rule,$(LIB_CRYPTO),$(CRYPTO_SRC)))
$(eval $(call lib_rule,$(LIB_FETCH),$(FETCH_SRC)))
$(eval $(call lib_rule,$(LIB_TPM),$(TPM_SRC)))
$(eval $(call lib_rule,$(LIB_FS),$(FS_SRC)))

$(BUILD)/azaionfs: $(call obj,fs/main.c) $(ALL_LIBS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/azaionctl: $(call obj,fs/ctl.c) $(ALL_LIBS)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/tests/unit/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

test: all
	tests/run --build $(BUILD)

ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1

asan:
	$(MAKE) BUILD=build-asan SAN=1 all
	$(ASAN_ENV) tests/run --build build-asan --label asan

# What CI runs: the suite on the release build, then under ASan+UBSan, and
# one closing line that sums both.
check: all
	$(MAKE) BUILD=build-asan SAN=1 all
	@rm -f $(BUILD)/.summary-release $(BUILD)/.summary-asan
	-tests/run --build $(BUILD) --label release --summary $(BUILD)/.summary-release
	@# 74 (valgrind), 75 (fuzz), 83 (arm64) and 84 (packages) build and run their
	@# own binaries: the sanitizer pass would only repeat them.
	-$(ASAN_ENV) tests/run --build build-asan --label asan --summary $(BUILD)/.summary-asan \
		--exclude 74-valgrind --exclude 75-fuzz --exclude 83-cross-arm64 --exclude 84-package
	@cat $(BUILD)/.summary-release $(BUILD)/.summary-asan 2>/dev/null | \
		awk '{p += $$1; f += $$2; n++} END {if (n < 2) f++; \
		printf "%d passed, %d failed\n", p, f; exit (f > 0 || p == 0)}'

demo: all
	scripts/demo

# libFuzzer targets (clang, ASan+UBSan) for every parser of outside data:
# `make fuzz` builds them in $(FUZZ_BUILD)/fuzz/ and runs each for
# FUZZ_SECONDS over its seeds in tests/fuzz/corpus/TARGET/; a crash fails.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(patsubst tests/fuzz/%.c,$(FUZZ_BUILD)/fuzz/%,$(FUZZ_SRC))

$(BUILD)/fuzz/%: $(BUILD)/tests/fuzz/%.o $(ALL_LIBS)
	@mkdir -p $(dir $@)
	@$(if $(Q),echo "  LD      $@")
	$(Q)$(CC) $(ALL_LDFLAGS) -fsanitize=fuzzer -o $@ $^ $(LIBS)

fuzz-build:
	$(MAKE) BUILD=$(FUZZ_BUILD) CC=clang SAN=1 CFLAGS=-fsanitize=fuzzer-no-link $(FUZZ_BINS)

fuzz: fuzz-build
	tests/fuzz/run --build $(FUZZ_BUILD) --seconds $(FUZZ_SECONDS)

# The unit test programs under valgrind's memcheck, against the local stack
# (test_fetch and test_tpm need it): no error and no definite leak.
valgrind: all
	tests/run --build $(BUILD) --label valgrind 74-valgrind

# 16 readers over every model for SOAK_SECONDS (default 300); not in `make test`.
soak: all
	tests/soak --build $(BUILD)

format-check:
	clang-format --dry-run --Werror crypto/*.[ch] fetch/*.[ch] tpm/*.[ch] fs/*.[ch] tests/unit/*.[ch]

install: $(BUILD)/azaionfs $(BUILD)/azaionctl
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man1 \
		$(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)/etc/azaion
	install -m 0755 $(BUILD)/azaionfs $(DESTDIR)$(SBINDIR)/azaionfs
	install -m 0755 $(BUILD)/azaionctl $(DESTDIR)$(BINDIR)/azaionctl
	install -m 0644 man/azaionfs.8 $(DESTDIR)$(MANDIR)/man8/azaionfs.8
	install -m 0644 man/azaionctl.1 $(DESTDIR)$(MANDIR)/man1/azaionctl.1
	install -m 0644 man/azaionfs.conf.5 $(DESTDIR)$(MANDIR)/man5/azaionfs.conf.5
	sed 's|/usr/local/sbin/azaionfs|$(SBINDIR)/azaionfs|' scripts/azaionfs.service \
		>$(DESTDIR)$(UNITDIR)/azaionfs.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/azaionfs.service
	@# An existing configuration is the operator's: never overwrite it.
	test -e $(DESTDIR)/etc/azaion/azaionfs.conf || \
		install -m 0644 azaionfs.conf $(DESTDIR)/etc/azaion/azaionfs.conf
	@# The group that may read the models (the unit's gid=azaion); a staged
	@# install (DESTDIR) leaves it to its package's own scripts.
	test -n "$(DESTDIR)" || getent group azaion >/dev/null || groupadd --system azaion

# Leaves the configuration, state_dir and cache_dir alone.
uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/azaionfs $(DESTDIR)$(BINDIR)/azaionctl \
		$(DESTDIR)$(MANDIR)/man8/azaionfs.8 $(DESTDIR)$(MANDIR)/man1/azaionctl.1 \
		$(DESTDIR)$(MANDIR)/man5/azaionfs.conf.5 $(DESTDIR)$(UNITDIR)/azaionfs.service

# aarch64 binaries in build-arm64/ with Debian's cross compiler, unit tests
# under qemu-user (installs the packages it needs on first use).
cross-arm64:
	scripts/cross-arm64

# Debian packages (debian/): `make deb` builds azaionfs_VERSION_amd64.deb in
# build-deb/, `make deb-arm64` the arm64 one in build-deb-arm64/ with the
# cross compiler of scripts/cross-arm64. The tree is copied first (without
# build folders and .git), so dpkg-buildpackage neither writes beside the
# tree nor cleans the developer's build folders.
DEB_EXCLUDES := --exclude=./build* --exclude=./.git --exclude=./tests/node_modules \
	--exclude=__pycache__ --exclude=./debian/build --exclude=./debian/azaionfs \
	--exclude=./debian/.debhelper --exclude=./debian/files
define deb_rule
$(1):
	rm -rf $(2) && mkdir -p $(2)/src/azaionfs
	tar -c $(DEB_EXCLUDES) -f - . | tar -x -C $(2)/src/azaionfs -f -
	cd $(2)/src/azaionfs && dpkg-buildpackage -b -us -uc $(3)
	mv $(2)/src/*.deb $(2)/src/*.buildinfo $(2)/src/*.changes $(2)/
	rm -rf $(2)/src
	@ls $(2)/*.deb
endef
$(eval $(call deb_rule,deb,build-deb,))
DEB_ARM64_FLAGS := -aarm64 -Pcross,nocheck
$(eval $(call deb_rule,deb-arm64,build-deb-arm64,$$(DEB_ARM64_FLAGS)))

clean:
	rm -rf build build-asan build-arm64 build-deb build-deb-arm64 $(FUZZ_BUILD)

.PHONY: all test asan check demo install uninstall cross-arm64 clean format-check \
	fuzz fuzz-build valgrind soak deb deb-arm64
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
