# A real Istio control plane for tests (tests/mesh): istiod and pilot-agent built from the Go
# module istio.io/istio pinned in tests/mesh/istio/go.mod. Included from the top Makefile.

MESH_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
MESH_ROOT := $(abspath $(MESH_MK_DIR)/../..)
ISTIO_VERSION := $(shell awk '$$1 == "istio.io/istio" && $$2 ~ /^v/ {print $$2; exit}' $(MESH_MK_DIR)/istio/go.mod)
ISTIO_BIN_DIR := $(MESH_ROOT)/build/istio/$(ISTIO_VERSION)
ISTIO_BINARIES := $(ISTIO_BIN_DIR)/pilot-discovery $(ISTIO_BIN_DIR)/pilot-agent $(ISTIO_BIN_DIR)/envoy_bootstrap.json

.PHONY: mesh-build mesh-test bench-mesh demo-mesh

mesh-build: $(ISTIO_BINARIES) ## Build istiod (pilot-discovery) and pilot-agent (pinned in tests/mesh/istio/go.mod) into build/istio/<version>/

# Rebuilt only when the pin changes; Go's build cache makes a rebuild cheap.
$(ISTIO_BINARIES) &: $(MESH_MK_DIR)/istio/go.mod $(MESH_MK_DIR)/istio/go.sum
	$(MESH_MK_DIR)/build-istio.sh

mesh-test: wasm oci cluster-build mesh-build ## The filter in a real Istio mesh: istiod + Envoy sidecars on the real API server, the image pulled by pilot-agent from a local registry (cargo test -p wasm-canary-mesh)
	cd $(MESH_ROOT) && cargo test -p wasm-canary-mesh

bench-mesh: wasm cluster-build mesh-build ## Measure rollout step -> config running in a real sidecar (p50/p99 over 25 steps); writes bench/MESH.md
	cd $(MESH_ROOT) && cargo test -p wasm-canary-controller --test mesh_rollout -- --ignored bench_step_to_sidecar_latency --nocapture

demo-mesh: wasm cluster-build mesh-build ## The seed's rollout of reviews live in a real Istio mesh (API server, istiod, Envoy sidecars, the controller), step by step: split, hashes, promote -> sidecar (~30 s)
	cd $(MESH_ROOT) && cargo test -q -p wasm-canary-controller --test mesh_demo -- --ignored --nocapture
