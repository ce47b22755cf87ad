# flowzoo: `make demo` and `make test` do all set-up on a fresh machine.
#
# The Python venv (PyPI's torch wheel carries libtorch) and cargo's target directory live in a
# per-user cache keyed by the torch version, so a fresh clone reuses them: torch is 4.6 GB to
# install and torch-sys's C++ takes 5-9 minutes to compile on 2 cores.
SHELL := /bin/bash
TORCH_VERSION := 2.11.0
FLOWZOO_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/flowzoo
VENV ?= $(FLOWZOO_CACHE)/venv-torch-$(TORCH_VERSION)
FLOWZOO_TARGET ?= $(FLOWZOO_CACHE)/target-torch-$(TORCH_VERSION)
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.flowzoo-setup-ok
BIN := target/release/flowzoo
THREADS ?= 2
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export CARGO_TARGET_DIR := $(FLOWZOO_TARGET)

.PHONY: setup build demo test test-rust test-python test-gpu-script bench models ood-table ood-tabular toys vi-examples vae-table clean-cache help
help:
	@echo "make demo   - set up, build, train the digits Glow, evaluate, sample, export"
	@echo "make test   - set up, build, run every test (Rust and Python)"
	@echo "make bench  - flowzoo vs the PyTorch reference, nflows and zuko: same work, same threads"
	@echo "make models - rebuild the shipped pretrained models under models/"
	@echo "make ood-table - measure README's \"Finding anomalies\" tables (needs Fashion-MNIST; OOD_MODEL=RUN)"
	@echo "make ood-tabular - only its tabular table (digits64 without one class, ~8 min)"
	@echo "make vi-examples - the README's flowzoo fit examples, measured (docs/vi/)"
	@echo "make vae-table - the README's VAE table: diagonal vs flow posteriors on the digits (docs/vi/)"

# After the venv: Gloo's headers (libgloo-dev) and, with a CUDA wheel, the CUDA headers that
# build.rs needs for distributed training (scripts/setup_dist.sh; it never fails the setup).
setup: $(STAMP)
	@PYTHON=$(PYTHON) flock $(FLOWZOO_CACHE)/.setup.lock bash scripts/setup_dist.sh
$(STAMP):
	@mkdir -p $(FLOWZOO_CACHE)
	@echo "== setup: venv with torch==$(TORCH_VERSION) in $(VENV) (once per machine)"
	flock $(FLOWZOO_CACHE)/.setup.lock bash -c '\
	  set -e; if [ -f $(STAMP) ]; then exit 0; fi; \
	  [ -x $(PYTHON) ] || python3 -m venv $(VENV); \
	  $(PYTHON) -m pip install --quiet "torch==$(TORCH_VERSION)" numpy pytest safetensors; \
	  $(PYTHON) -c "import torch; assert torch.__version__.startswith(\"$(TORCH_VERSION)\"), torch.__version__"; \
	  touch $(STAMP)'

# `target` points into the cache so that `target/release/flowzoo` is where a user looks for it.
build: setup
	@mkdir -p $(FLOWZOO_TARGET)
	@if [ ! -e target ]; then ln -s $(FLOWZOO_TARGET) target; fi
	cargo build --release
	@echo "== built $(BIN)"

demo: setup build
	bash scripts/demo.sh

test: setup build test-rust test-python test-gpu-script

test-rust:
	RUST_TEST_THREADS=$(THREADS) cargo test --release -- --test-threads=$(THREADS)

# The Python side: the reference Glow's own tests and the interop tests (export, import),
# which drive target/release/flowzoo.
test-python:
	FLOWZOO_BIN=$(CURDIR)/$(BIN) FLOWZOO_PYTHON=$(PYTHON) PYTHONPATH=$(CURDIR)/python \
	  $(PYTHON) -m pytest -q python/tests_ref $(wildcard tests/python)

# One invocation, one table per part: Glow against the PyTorch reference (bench/run.sh), then
# tabular RealNVP against nflows (bench/tabular.sh installs nflows into the venv on first use),
# MAF / NSF / IAF against zuko and nflows (bench/ar.sh installs zuko too), then FFJORD against
# zuko's CNF (bench/cnf.sh), then FFJORD's two objectives, flow matching against maximum
# likelihood, on pinwheel (bench/cnf_objectives.sh: one thread, process CPU seconds to each
# test log-likelihood).
bench: setup build
	PYTHON=$(PYTHON) FLOWZOO_BIN=$(BIN) THREADS=$(THREADS) bash bench/run.sh
	PYTHON=$(PYTHON) FLOWZOO_BIN=$(BIN) THREADS=$(THREADS) bash bench/tabular.sh
	PYTHON=$(PYTHON) FLOWZOO_BIN=$(BIN) THREADS=$(THREADS) bash bench/ar.sh
	PYTHON=$(PYTHON) THREADS=$(THREADS) bash bench/cnf.sh
	PYTHON=$(PYTHON) THREADS=1 bash bench/cnf_objectives.sh

# bench/gpu.sh on a tiny model on the CPU (under a minute), so the H200 script never rots.
test-gpu-script:
	PYTHON=$(PYTHON) FLOWZOO_BIN=$(BIN) bash bench/gpu.sh --device cpu --tiny

models: setup build
	bash scripts/build_models.sh

# README's "Finding anomalies" tables (docs/ood/): a Fashion-MNIST Glow (OOD_MODEL, default
# models/glow_fashion_mnist) against out-of-distribution sets made from data we have
# (scripts/ood_table.sh), and digits64 RealNVPs finding a class they never saw
# (scripts/ood_tabular.sh; alone: make ood-tabular).
OOD_MODEL ?= models/glow_fashion_mnist
ood-table: setup build
	FLOWZOO_BIN=$(BIN) OOD_MODEL=$(OOD_MODEL) bash scripts/ood_table.sh --update-readme
	FLOWZOO_BIN=$(BIN) bash scripts/ood_tabular.sh --update-readme
ood-tabular: setup build
	FLOWZOO_BIN=$(BIN) bash scripts/ood_tabular.sh --update-readme

# The bundled 2-D toys under data/toys (seeded; the committed files are these).
toys: build
	for t in moons circles 8gaussians checkerboard pinwheel 2spirals; do \
	  $(BIN) toy $$t -n 10000 --seed 0 -o data/toys/$$t.csv; done
	$(BIN) toy moons -n 10000 --seed 0 --rotate -o data/toys/moons_rotated.csv

# The README's "Fitting a density" examples: U1-U4, the Gaussian with a known log Z, the
# logistic regression against its MCMC reference; figures in docs/vi/ (scripts/vi_examples.sh).
vi-examples: setup build
	PYTHON=$(PYTHON) FLOWZOO_BIN=$(BIN) bash scripts/vi_examples.sh

# The README's VAE table: the digits VAE with each posterior (same encoder, decoder and steps),
# test ELBO and importance-weighted bound (scripts/vae_table.sh; STEPS=, K= override).
vae-table: setup build
	PYTHON=$(PYTHON) FLOWZOO_BIN=$(BIN) bash scripts/vae_table.sh --update-readme

clean-cache:
	rm -rf $(FLOWZOO_CACHE)
