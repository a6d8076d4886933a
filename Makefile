# Entry points for building and testing wasmlet. `make` alone lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Steps depend on each other's side effects (deps before build...): keep order.
.NOTPARALLEL:

.PHONY: help deps build release images unit chart e2e chaos vm-test test demo bench clean wasm-image push

# containerd versions `make e2e` runs the suite against, one whole run each
# (tests/containerd.sh fetches the newer ones). The demo and bench use 1.6.20.
CONTAINERD_VERSIONS ?= 1.6.20 1.7.24 2.1.9

help:
	@echo "Targets:"
	@echo "  deps    install system packages, wasm targets and pytest (tests/deps.sh)"
	@echo "  build   build the shim: target/release/containerd-shim-wasmlet-v1"
	@echo "  release static, stripped shim and node installer, their image and"
	@echo "          SHA256SUMS in out/release (images/release.sh)"
	@echo "  images  build test images into out/images/*.tar (images/build.sh)"
	@echo "  unit    run the Rust unit tests and the shim tree's checks (tests/structure)"
	@echo "  chart   render, lint and validate charts/wasmlet (tests/chart)"
	@echo "  e2e     run the end-to-end tests against a private containerd, once per"
	@echo "          version in CONTAINERD_VERSIONS (default: $(CONTAINERD_VERSIONS))"
	@echo "  chaos   the fault tests alone (containerd and shims killed, 1,000 pod"
	@echo "          cycles, a full cache disk, upgrade and uninstall under live pods),"
	@echo "          once per version in CONTAINERD_VERSIONS; part of e2e"
	@echo "  vm-test the VM lane: a node with systemd as PID 1 and cgroup v2 only, made"
	@echo "          once from Debian's packages (tests/vm), wasmlet installed by its"
	@echo "          installer, pods through CRI with the systemd and cgroupfs drivers"
	@echo "  test    deps + build + release + images + unit + chart + e2e + vm-test (what CI runs)"
	@echo "  demo    run wasm and runc tasks side by side and print a table"
	@echo "          (demo, e2e and bench run the shim that ships: out/release)"
	@echo "  bench   run the benchmarks (tests/bench.py)"
	@echo "  wasm-image KIND=plain|artifact WASM=FILE NAME=REF OUT=TAR"
	@echo "          pack a .wasm as an OCI image archive (images/wasm_image.py)"
	@echo "  push IMAGE=TAR REF=HOST/REPO:TAG"
	@echo "          push an archive to a registry over plain HTTP (images/push.py)"
	@echo "  clean   remove build outputs (target/, out/)"

deps:
	bash tests/deps.sh
	bash tests/build_cache.sh

build:
	bash tests/build_cache.sh
	cargo build --release

release: deps
	bash images/release.sh

images:
	bash images/build.sh

unit:
	cargo test --release --workspace
	python3 -m pytest -q tests/structure

chart: deps
	python3 -m pytest -v tests/chart

# The fault tests: containerd and shims killed, churn, cache faults, an
# upgrade and an uninstall under live pods. Part of e2e; `make chaos` alone.
CHAOS_TESTS = tests/e2e/test_restarts.py tests/e2e/test_shim_death.py tests/e2e/test_churn.py \
	tests/e2e/test_cache_faults.py tests/e2e/test_installer.py::test_upgrade_and_uninstall_under_a_running_wasm_pod

# Runs pytest on $(1) once per version; every version runs even after one
# fails, so one run shows them all. The churn test makes $(3) pod cycles
# against each version (about 9 minutes a thousand on 2 cores): `make chaos`
# makes 1,000; `make e2e` (and so CI) 300 against the newest and 200 against
# the others, to keep CI within its time.
define per_version
	@failed=""; \
	for version in $(CONTAINERD_VERSIONS); do \
		echo "== $(2) against containerd $$version"; \
		cycles=$(3); [[ $$version == "$(lastword $(CONTAINERD_VERSIONS))" && $$cycles -lt 300 ]] && cycles=300; \
		WASMLET_CONTAINERD=$$version WASMLET_CHURN_CYCLES=$$cycles python3 -m pytest -v $(1) || failed="$$failed $$version"; \
	done; \
	if [[ -n "$$failed" ]]; then \
		echo "$(2) failed against containerd$$failed"; \
		exit 1; \
	fi
endef

e2e:
	$(call per_version,tests/e2e,e2e,200)

chaos: deps build release images
	$(call per_version,$(CHAOS_TESTS),chaos,1000)

vm-test: deps release images
	python3 tests/vm/lane.py

test: deps build release images unit chart e2e vm-test

demo: deps release images
	python3 tests/demo.py

bench: deps release images
	python3 tests/bench.py

wasm-image:
	python3 images/wasm_image.py "$(KIND)" --name "$(NAME)" --out "$(OUT)" $(WASM)

push:
	python3 images/push.py "$(IMAGE)" "$(REF)"

clean:
	cargo clean
	rm -rf out
