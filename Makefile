# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install everything, run the offline demo
#   make test-fast - the tests that need no trained model (the edit-test loop)
#   make docs   - build the documentation site into site/ (strict: a broken link fails)
#   make test   - create .venv, install everything, run the test suite (and, when npm is
#                 installed, the Node.js parity test: examples/node's packages are installed first)
# TORCH pins the torch/torchvision pair (other pairs may not import together); override it for
# another platform, e.g. make test TORCH="torch==2.9.1 torchvision==0.24.1". A new TORCH
# reinstalls into the existing .venv (the pins are kept in .venv/.torch-pins); `make clean`
# starts from nothing.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
NPM := $(shell command -v npm 2>/dev/null)
NODE_DEPS := $(if $(NPM),examples/node/node_modules/.installed)

.PHONY: demo test test-fast lint docs install clean FORCE

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Rewritten (so newer) only when TORCH differs from the pins installed last.
$(VENV)/.torch-pins: FORCE | $(BIN)/python
	@if [ "$$(cat $@ 2>/dev/null)" != "$(TORCH)" ]; then echo "$(TORCH)" > $@; fi

$(VENV)/.installed: pyproject.toml $(VENV)/.torch-pins | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[all]"
	touch $@

# --ignore-scripts: onnxruntime-node's CPU build ships in the package; its install script would
# only download CUDA binaries.
examples/node/node_modules/.installed: examples/node/package-lock.json
	cd examples/node && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/medvit-edge demo

test: install $(NODE_DEPS)
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check medvit_edge train export tests bench
	$(BIN)/ruff format --check medvit_edge train export tests bench

# NO_MKDOCS_2_WARNING: mkdocs-material's banner about MkDocs 2.0, noise in every build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) models/demo site examples/node/node_modules
