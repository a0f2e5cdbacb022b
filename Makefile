# Vela top-level Makefile: thin wrapper over Meson.
#   make          build everything into build/ (binaries in build/bin)
#   make run      install deps, build, build the test guest, boot a demo VM
#   make test     install deps, build (normal + ASan/UBSan), run every test
BUILD   := build
MESON   := $(BUILD)/meson
ASAN    := $(BUILD)/asan
FUZZ    := $(BUILD)/fuzz
BIN     := $(BUILD)/bin
PROGRAMS := vela vela-vmx velad

.PHONY: all build deps deps-test run test unit integ fuzz asan tsan clang guest web clean

all: build

deps:
	@scripts/install-deps.sh run

deps-test:
	@scripts/install-deps.sh test

$(MESON)/build.ninja:
	meson setup $(MESON) --buildtype=debugoptimized

build: $(MESON)/build.ninja
	ninja -C $(MESON)
	@mkdir -p $(BIN)
	@ln -sf ../meson/src/cli/vela $(BIN)/vela
	@ln -sf ../meson/src/vmx-sup/vela-vmx $(BIN)/vela-vmx
	@ln -sf ../meson/src/velad/velad $(BIN)/velad

$(ASAN)/build.ninja:
	meson setup $(ASAN) --buildtype=debug -Db_sanitize=address,undefined -Db_lundef=false

asan: $(ASAN)/build.ninja
	ninja -C $(ASAN)

TSAN    := $(BUILD)/tsan
$(TSAN)/build.ninja:
	CC=clang meson setup $(TSAN) --buildtype=debug -Db_sanitize=thread -Db_lundef=false

tsan: $(TSAN)/build.ninja
	ninja -C $(TSAN) tests/unit/test-vdisk tests/unit/test-blk tests/unit/test-vhost tests/unit/test-host

CLANG   := $(BUILD)/clang
$(CLANG)/build.ninja:
	CC=clang meson setup $(CLANG) --buildtype=debugoptimized

clang: $(CLANG)/build.ninja
	ninja -C $(CLANG)

$(FUZZ)/build.ninja:
	CC=clang meson setup $(FUZZ) --buildtype=debug -Dfuzz=true -Dtests=disabled

fuzz: $(FUZZ)/build.ninja
	ninja -C $(FUZZ)

guest: build
	tests/guest/build-guest.sh $(BUILD)/guest

# The web UI: npm packages pinned by web/package-lock.json, bundled into
# build/web, which velad serves (--web-root).
web:
	cd web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs ../$(BUILD)/web

run: deps build guest web
	scripts/run-demo.sh

test: deps-test build asan tsan clang fuzz guest web
	tests/run-all.sh

clean:
	rm -rf $(BUILD)
