# Entry points for building and testing wasmlet. `make` alone lists them.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Steps depend on each other's side effects (deps before build...): keep order.
.NOTPARALLEL:

.PHONY: help deps build images unit e2e test demo bench clean

help:
	@echo "Targets:"
	@echo "  deps    install system packages, wasm targets and pytest (tests/deps.sh)"
	@echo "  build   build the shim: target/release/containerd-shim-wasmlet-v1"
	@echo "  images  build test images into out/images/*.tar (images/build.sh)"
	@echo "  unit    run the Rust unit tests"
	@echo "  e2e     run the end-to-end tests against a private containerd"
	@echo "  test    deps + build + images + unit + e2e (what CI runs)"
	@echo "  demo    run wasm and runc tasks side by side and print a table"
	@echo "  bench   run the benchmarks (tests/bench.py)"
	@echo "  clean   remove build outputs (target/, out/)"

deps:
	bash tests/deps.sh

build:
	cargo build --release

images:
	bash images/build.sh

unit:
	cargo test --release --workspace

e2e:
	python3 -m pytest -v tests/e2e

test: deps build images unit e2e

demo: deps build images
	python3 tests/demo.py

bench: deps build images
	python3 tests/bench.py

clean:
	cargo clean
	rm -rf out
