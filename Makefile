# kmesh-go build and test entry points. `make help` lists them.
#
# Everything a target needs is installed by `make deps` (apt packages, guest
# kernels, Go modules); `make test` and `make demo` run it first, so a fresh
# Debian 12 machine goes from clone to green with one command.

SHELL       := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GO          ?= go
export PATH := /usr/local/go/bin:$(PATH)

KMESH_CACHE ?= /var/cache/kmesh-go
export KMESH_CACHE
BUILD       := $(CURDIR)/.build

# Kernel ABIs resolved by `make deps` from Debian's metapackages.
-include $(KMESH_CACHE)/kver.mk
KHEADERS    ?= $(KMESH_CACHE)/headers/$(KVER_612)/usr/src/linux-headers-$(KVER_612)

GO_BINS     := kmeshd kmeshctl
# grpcnotrace leaves gRPC's request tracing (golang.org/x/net/trace and the
# html/template it pulls in) out of the daemons: a 7 MB smaller kmeshd and
# ~3 MB less RSS (docs/performance.md). The tests that build kmeshd use it too.
GO_TAGS     := grpcnotrace
VMTEST      := $(GO) run ./test/vm/vmtest

.PHONY: help all build deps generate check-generated vmlinux lint kmod kmod-clean \
        fuzz-build fuzz-unit fuzz-smoke fuzz \
        test test-go fuzz-go-smoke vmtest demo bench bench-smoke clean uninstall

help:
	@echo "make deps            install toolchain, guest kernels, Go modules (root)"
	@echo "make build           build kmeshd and kmeshctl into .build/"
	@echo "make generate        regenerate bpf2go bindings and objects (needs clang-19)"
	@echo "make vmlinux         regenerate bpf/include/vmlinux.h from the 6.12 headers' BTF"
	@echo "make kmod            build kmod/kmesh.ko against the Debian 6.12 headers (W=1)"
	@echo "make fuzz-smoke      HTTP parser: corpus unit test + 30 s libFuzzer run (in make test)"
	@echo "make fuzz            HTTP parser: long libFuzzer run (FUZZ_SECONDS, default 1800)"
	@echo "make test            all checks and all three test tiers (root)"
	@echo "make vmtest          the VM tier only: qemu/TCG on Debian 6.12 and 6.1"
	@echo "make demo            the embedded-control-plane demo (root)"
	@echo "make bench           full benchmark run; bench-smoke is the CI-sized one"

all: build

build:
	@mkdir -p $(BUILD)
	$(foreach b,$(GO_BINS),CGO_ENABLED=0 $(GO) build -trimpath -tags $(GO_TAGS) -o $(BUILD)/$(b) ./daemon/$(b) &&) true

deps:
	@out=$$(bash .ci/deps.sh) && mkdir -p $(KMESH_CACHE) && \
	  echo "$$out" | grep -E "^(KVER_612|KVER_61|KHEADERS)=" > $(KMESH_CACHE)/kver.mk.tmp && \
	  mv $(KMESH_CACHE)/kver.mk.tmp $(KMESH_CACHE)/kver.mk && cat $(KMESH_CACHE)/kver.mk

# --- BPF code generation -------------------------------------------------------

generate:
	$(GO) generate ./pkg/bpf/...

# Fails when the committed bpf2go output differs from what the sources produce.
GENERATED := pkg/bpf/objs
check-generated: generate
	@if ! git diff --quiet -- $(GENERATED) || [ -n "$$(git ls-files --others --exclude-standard -- $(GENERATED))" ]; then \
	  echo "check-generated: committed bpf2go output is stale; run 'make generate' and commit:"; \
	  git status --short -- $(GENERATED); exit 1; fi
	@echo "check-generated: bpf2go output is up to date"

vmlinux:
	bpftool btf dump file $(KHEADERS)/vmlinux format c > bpf/include/vmlinux.h

# --- checks --------------------------------------------------------------------

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags vmguest ./...
	$(GO) tool staticcheck ./...
	$(GO) tool staticcheck -tags vmguest ./...

# --- kernel module -------------------------------------------------------------

# W=1 must stay warning-free: any "warning:" line fails the build.
kmod:
	@test -d $(KHEADERS) || { echo "kmod: $(KHEADERS) missing; run make deps"; exit 1; }
	@$(MAKE) -s -C $(KHEADERS) M=$(CURDIR) W=1 modules 2>&1 | tee $(BUILD).kmod.log; \
	  if grep -q 'warning:' $(BUILD).kmod.log; then echo "kmod: warnings with W=1 (see above)"; exit 1; fi
	@rm -f $(BUILD).kmod.log
	@kmod/check_tailcalls.sh kmod/kmesh.ko
	@ls -l kmod/kmesh.ko

# Never `make -C $(KHEADERS) M=$(CURDIR) clean`: kbuild's clean deletes every *.mod
# and *.o under M, which includes go.mod and the committed BPF objects.
kmod-clean:
	rm -f kmod/*.o kmod/*.ko kmod/*.mod kmod/*.mod.c kmod/.*.cmd kmod/modules.order \
	  Module.symvers modules.order .module-common.o .*.cmd

# --- HTTP parser in userspace (kmod/http_parse.c, kmod/fuzz) -----------------------

# The module's parser file, unchanged, under ASan+UBSan: a unit test over the
# request-head corpus (pkg/kmod/testdata/http, also checked against the kernel
# build in the VM) and a libFuzzer target. FUZZ_JOBS > 1 runs parallel workers.
FUZZ_DIR      := $(BUILD)/fuzz
FUZZ_CFLAGS   := -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all \
                 -Wall -Wextra -Werror -Ikmod
HTTP_CORPUS   := pkg/kmod/testdata/http
FUZZ_SMOKE_SECONDS ?= 30
FUZZ_SECONDS  ?= 1800
FUZZ_JOBS     ?= 1

fuzz-build:
	@mkdir -p $(FUZZ_DIR)/corpus
	clang-19 $(FUZZ_CFLAGS) -o $(FUZZ_DIR)/http_corpus kmod/fuzz/http_corpus.c kmod/http_parse.c
	clang-19 $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $(FUZZ_DIR)/fuzz_http kmod/fuzz/fuzz_http.c kmod/http_parse.c

fuzz-unit: fuzz-build
	$(FUZZ_DIR)/http_corpus $(HTTP_CORPUS)

# libFuzzer prints "Done N runs in S second(s)"; the line is kept in
# $(FUZZ_DIR)/<target>.log and echoed. The working corpus in $(FUZZ_DIR)/corpus
# grows across runs; the checked-in corpus seeds it.
define run_fuzzer
	cd $(FUZZ_DIR) && ./fuzz_http -max_total_time=$(1) -max_len=12000 -timeout=10 -rss_limit_mb=1024 \
	  -dict=$(CURDIR)/kmod/fuzz/http.dict -print_final_stats=1 $(if $(filter-out 1,$(FUZZ_JOBS)),-jobs=$(FUZZ_JOBS) -workers=$(FUZZ_JOBS)) \
	  corpus $(CURDIR)/$(HTTP_CORPUS) > $(2) 2>&1 || { tail -40 $(2); exit 1; }
	@grep -E "^Done [0-9]+ runs" $(2) || tail -3 $(2)
endef

fuzz-smoke: fuzz-unit
	$(call run_fuzzer,$(FUZZ_SMOKE_SECONDS),$(FUZZ_DIR)/smoke.log)

fuzz: fuzz-unit
	$(call run_fuzzer,$(FUZZ_SECONDS),$(FUZZ_DIR)/fuzz.log)

# --- tests ---------------------------------------------------------------------

# The README's test command. Unit and host tiers run in one `go test` pass as root;
# host-tier tests announce themselves and are counted separately by testreport.
test: deps lint check-generated kmod fuzz-smoke test-go fuzz-go-smoke vmtest bench-smoke
	@echo; echo "== make test summary: host and unit tiers (go test -v result lines), then the VM tier =="
	@grep -E '^(--- |ok  '$$'\t''|FAIL)' $(BUILD)/test-go.txt
	@cat $(BUILD)/vm/$(KVER_612)/summary.txt $(BUILD)/vm/$(KVER_61)/summary.txt
	@grep -E '^tiers:' $(BUILD)/test-go.txt
	@echo "make test: all checks and tiers passed"
	@# The closing line in the plain form CI readers count: every test of every tier.
	@cat $(BUILD)/test-go.txt $(BUILD)/vm/$(KVER_612)/summary.txt $(BUILD)/vm/$(KVER_61)/summary.txt | awk \
	  '/^tiers:/ { p += $$3 + $$6; s += $$8; f += $$10 } \
	   /^(vm|FAIL)\t/ { split($$0, c, "\t"); n = split(c[4], w, " "); p += w[1]; f += w[3]; s += w[5] } \
	   END { printf "%d passed, %d failed, %d skipped\n", p, f, s; if (p == 0 || f > 0) exit 1 }'

test-go:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@mkdir -p $(BUILD)
	$(GO) test -count=1 -json -timeout 20m ./... | $(GO) run ./test/tools/testreport | tee $(BUILD)/test-go.txt

vmtest: kmod
	$(VMTEST) -kver $(KVER_612) -suite kmod,ebpf,kn
	$(VMTEST) -kver $(KVER_61) -suite ebpf,kmodold

# A few seconds of coverage-guided fuzzing per target (the seed corpora also run
# in test-go). The budget is a count of executions (name:package:count), about 4 s
# each here: a duration -fuzztime races Go's fuzz coordinator at the deadline and
# fails with a bare "context deadline exceeded" on a loaded machine (go.dev/issue/75804,
# fixed in Go 1.27). -timeout bounds the wall clock. FUZZSCALE multiplies the counts.
# Longer runs: go test -run '^$$' -fuzz FuzzLoad -fuzztime 10m ./pkg/controlplane
FUZZ_TARGETS := FuzzLoad:./pkg/controlplane:1000 FuzzWorkloadAPI:./pkg/compile:12000 \
                FuzzEnvoy:./pkg/compile:12000 FuzzDecodeState:./pkg/dataplane:40000
FUZZSCALE    ?= 1
fuzz-go-smoke:
	@for t in $(FUZZ_TARGETS); do \
	  name=$${t%%:*}; rest=$${t#*:}; pkg=$${rest%%:*}; n=$$(( $${rest##*:} * $(FUZZSCALE) )); \
	  echo "fuzz $$name ($${n} execs)"; \
	  out=$$(mktemp); \
	  if ! $(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $${n}x -fuzzminimizetime 2s -timeout 5m $$pkg >$$out 2>&1; then \
	    cat $$out; rm -f $$out; exit 1; fi; rm -f $$out; \
	done

# --- demo and bench --------------------------------------------------------------

# MODE=kernel-native runs the demo inside the Debian 6.12 VM with kmesh.ko (this
# host cannot load modules) and streams its output here.
demo: deps build
ifeq ($(MODE),kernel-native)
	$(MAKE) kmod
	$(VMTEST) -kver $(KVER_612) -suite demo-kn
else
	$(GO) run ./test/e2e/demo $(if $(MODE),-mode $(MODE))
endif

# Full side-by-side run (manual; about an hour with the defaults): results, table and
# plots in docs/bench/. Extra flags: make bench BENCH_FLAGS='-repeat 5 -note "..."'.
bench: deps build
	$(GO) run ./bench/cmd/bench -out docs/bench $(BENCH_FLAGS)

# Tiny sweep through every scenario (< 60 s); fails on any error. Part of make test.
bench-smoke: build
	$(GO) run ./bench/cmd/bench -smoke -out $(BUILD)/bench-smoke

clean: kmod-clean
	rm -rf $(BUILD)

uninstall: build
	$(BUILD)/kmeshd uninstall
