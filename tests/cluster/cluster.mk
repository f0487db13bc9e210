# A real Kubernetes control plane for tests (tests/cluster/README.md).
# Included from the top Makefile; also usable alone: make -f tests/cluster/cluster.mk cluster-test

CLUSTER_MK_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
CLUSTER_ROOT := $(abspath $(CLUSTER_MK_DIR)/../..)
KUBE_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" && $$2 ~ /^v/ {print $$2; exit}' $(CLUSTER_MK_DIR)/kube/go.mod)
KUBE_BIN_DIR := $(CLUSTER_ROOT)/build/kube/$(KUBE_VERSION)
KUBE_BINARIES := $(KUBE_BIN_DIR)/kube-apiserver $(KUBE_BIN_DIR)/kube-controller-manager

.PHONY: cluster-build cluster-up cluster-down cluster-test cluster-deps

cluster-build: cluster-deps $(KUBE_BINARIES) ## Build kube-apiserver and kube-controller-manager (pinned in tests/cluster/kube/go.mod) into build/kube/<version>/; install etcd and openssl if missing

cluster-deps:
	@$(CLUSTER_MK_DIR)/install-deps.sh

# Rebuilt only when the pin changes; Go's build cache makes a rebuild cheap.
$(KUBE_BINARIES) &: $(CLUSTER_MK_DIR)/kube/go.mod $(CLUSTER_MK_DIR)/kube/go.sum
	$(CLUSTER_MK_DIR)/build-kube.sh

cluster-up: cluster-build ## Start etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 with Istio's CRDs; admin kubeconfig in build/cluster/kubeconfig
	$(CLUSTER_MK_DIR)/cluster-up.sh

cluster-down: ## Stop the control plane cluster-up started
	$(CLUSTER_MK_DIR)/cluster-down.sh

cluster-test: cluster-build ## Test against a real API server: Istio CRDs, server-side apply, conflicts, watches, RBAC (cargo test -p wasm-canary-cluster)
	cd $(CLUSTER_ROOT) && cargo test -p wasm-canary-cluster
