# azaionfs - plain Makefile. `make` builds build/azaionfs and build/azaionctl,
# `make test` runs the whole suite, `make asan` the same under ASan+UBSan.
# V=1 shows the commands.

PREFIX ?= /usr/local
DESTDIR ?=
SBINDIR ?= /sbin
BUILD ?= build
SAN ?=

CC ?= cc
PKGS := fuse3 openssl libcurl jansson libmicrohttpd tss2-esys tss2-mu tss2-tctildr tss2-rc
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

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
LDFLAGS ?=
ALL_CFLAGS := -std=gnu11 $(OPT) $(WARN) -fstack-protector-strong -fPIE \
	-D_GNU_SOURCE -I. $(PKG_CFLAGS) $(CFLAGS)
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
# fs first: it is the only library that uses the others.
ALL_LIBS := $(LIB_FS) $(LIB_CRYPTO) $(LIB_FETCH) $(LIB_TPM)
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

asan:
	$(MAKE) BUILD=build-asan SAN=1 all
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		tests/run --build build-asan --label asan

demo: all
	scripts/demo

format-check:
	clang-format --dry-run --Werror crypto/*.[ch] fetch/*.[ch] tpm/*.[ch] fs/*.[ch] tests/unit/*.[ch]

install: $(BUILD)/azaionfs $(BUILD)/azaionctl
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SBINDIR) $(DESTDIR)/etc/azaion
	install -m 0755 $(BUILD)/azaionfs $(DESTDIR)$(PREFIX)/bin/azaionfs
	install -m 0755 $(BUILD)/azaionctl $(DESTDIR)$(PREFIX)/bin/azaionctl
	ln -sf $(PREFIX)/bin/azaionfs $(DESTDIR)$(SBINDIR)/mount.fuse.azaionfs
	test -e $(DESTDIR)/etc/azaion/azaionfs.conf || \
		install -m 0600 azaionfs.conf $(DESTDIR)/etc/azaion/azaionfs.conf

clean:
	rm -rf build build-asan

.PHONY: all test asan demo install clean format-check
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
