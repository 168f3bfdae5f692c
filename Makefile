# i6pn — build, test and demo entry points. Run as root on Debian 12.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CLANG     ?= clang
ARCH      := $(shell uname -m)
BPF_ARCH  := $(subst x86_64,x86,$(subst aarch64,arm64,$(ARCH)))
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpf -D__TARGET_ARCH_$(BPF_ARCH) -I/usr/include/$(ARCH)-linux-gnu -Ibpf
BUILD     := build
BPF_SRCS  := $(wildcard bpf/*.bpf.c)
BPF_OBJS  := $(patsubst bpf/%.bpf.c,$(BUILD)/bpf/%.bpf.o,$(BPF_SRCS))
BPF_HDRS  := $(wildcard bpf/*.h)
ABI_TS    := agent/bpf/abi.generated.ts

APT_PKGS := clang llvm libbpf-dev libbpf1 bpftool prometheus iproute2 \
            iputils-ping python3-scapy tcpdump util-linux nftables iperf3 procps \
            g++ make openssl ethtool dnsutils dnsperf dnsmasq-base
DEPS_STAMP := node_modules/.i6pn-deps

# nats-server: Debian 13's (trixie), not Debian 12's 2.9.10: fetched by
# scripts/fetch-nats-server.sh into .deps/ (make clean leaves it). Tests, the
# demo and the benches run $(NATS_SERVER_BIN); test/helpers/nats-server-bin.ts
# defaults to the same path when run outside make.
NATS_DEB_VERSION := 2.10.27-1+b2
NATS_DIR         := .deps/nats-server
export NATS_SERVER_BIN := $(CURDIR)/$(NATS_DIR)/usr/sbin/nats-server

SOAK_MINUTES ?= 30

.PHONY: soak deps deps-nats-server bpffs build bpf ts test demo demo-down demo-shell bench bench-dataplane bench-agent bench-fleet bench-fabric bench-binding bench-events bench-dns bench-tunnel clean

## deps: install apt packages, npm modules and nats-server (idempotent, quick when done)
deps: $(DEPS_STAMP) deps-nats-server

deps-nats-server:
	@scripts/fetch-nats-server.sh $(NATS_DEB_VERSION) $(NATS_DIR)

$(DEPS_STAMP): package.json package-lock.json
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing apt packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# Debian starts these as services on install (nats-server: a machine that had Debian 12's
	@# package from an earlier make deps); i6pn runs its own instances.
	@for s in prometheus nats-server; do systemctl disable --now $$s >/dev/null 2>&1 || true; done
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

## build: BPF objects (BTF kept), the ABI module generated from their BTF, the TypeScript
build: deps bpf ts

bpf: $(BPF_OBJS) $(ABI_TS) $(BUILD)/bpf/i6pn-marker.bpf.o

# The same programs with one more map (I6PN_BUILD_MARKER): the new build the
# upgrade fault swaps in under traffic (test/faults/scenario-upgrade.ts). Not shipped.
$(BUILD)/bpf/i6pn-marker.bpf.o: bpf/i6pn.bpf.c $(BPF_HDRS)
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -DI6PN_BUILD_MARKER -c $< -o $@

$(BUILD)/bpf/%.bpf.o: bpf/%.bpf.c $(BPF_HDRS)
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(ABI_TS): $(BUILD)/bpf/i6pn.bpf.o agent/bpf/gen-abi.ts
	node --import=tsx agent/bpf/gen-abi.ts $< $@

ts: $(ABI_TS)
	npx tsc -p tsconfig.json
	@chmod +x dist/controller/cli.js dist/agent/main.js dist/gateway/main.js 2>/dev/null || true

## bpffs: pins live here; a fresh machine may not have it mounted
bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

## test: everything, as root (kernel, namespaces, nats-server, prometheus)
test: build bpffs
	npx ava

## unit: the tests that need neither root nor the kernel nor a server, in seconds, for an
## edit loop (no build: tsx runs the sources). `make unit SERVERS=1` adds the root-free
## tests that start nats-server or promtool (from make deps): the store and i6pnctl
## against a real server, a minute or two. As root they run as nobody, so a test that
## starts to need root or the kernel fails here and belongs out of these lists. Left out
## though root-free: deploy-nats (a minute of server configurations), deploy-image
## (builds the image's stages).
UNIT_TESTS := address schema nats-errors agent-decode agent-table agent-names agent-resolver \
  binding-packet binding-layout
UNIT_SERVER_TESTS := agent-events controller-cli controller-store controller-migrate \
  controller-observe controller-tunnel deploy-observability deploy-fleet
UNIT_FILES = $(patsubst %,test/%.test.ts,$(UNIT_TESTS) $(if $(SERVERS),$(UNIT_SERVER_TESTS)))
.PHONY: unit
unit:
	@if [ "$$(id -u)" = 0 ]; then \
	  setpriv --reuid=nobody --regid=nogroup --clear-groups env HOME=/nonexistent node_modules/.bin/ava $(UNIT_FILES); \
	else node_modules/.bin/ava $(UNIT_FILES); fi

## soak: the fault scenarios (test/faults/scenario-*.ts) round after round for SOAK_MINUTES (default 30),
## figures to bench/results/soak-<date>.{json,md}; not part of make test
soak: build bpffs
	SOAK_MINUTES=$(SOAK_MINUTES) node --import=tsx bench/soak.ts

demo: build bpffs
	bash test/fabric/demo.sh up

demo-down:
	bash test/fabric/demo.sh down

demo-shell:
	bash test/fabric/demo.sh shell $(NODE)

## bench: every benchmark against its baseline; writes bench/results/<date>.json and the table in bench/README.md
bench: bench-dataplane bench-fabric bench-agent bench-fleet bench-binding bench-events bench-dns bench-tunnel

BENCH_OBJS := $(BUILD)/bench/xdp_redirect.bpf.o $(BUILD)/bench/empty.bpf.o

# Bench-only programs (the flood generator): not product code, so not in bpf/.
$(BUILD)/bench/%.bpf.o: bench/bpf/%.bpf.c
	@mkdir -p $(dir $@)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@

bench-dataplane: build bpffs $(BUILD)/bench/empty.bpf.o
	node --import=tsx bench/dataplane.ts

bench-fabric: build bpffs $(BENCH_OBJS)
	node --import=tsx bench/fabric.ts

bench-agent: build bpffs
	node --import=tsx bench/agent.ts

bench-fleet: build
	node --import=tsx bench/fleet.ts

bench-binding: build bpffs
	node --import=tsx bench/binding.ts

bench-events: build bpffs
	node --import=tsx bench/events.ts

bench-dns: build bpffs
	node --import=tsx bench/dns.ts

bench-tunnel: build bpffs
	node --import=tsx bench/tunnel.ts

clean:
	rm -rf $(BUILD) dist
