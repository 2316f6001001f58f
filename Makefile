# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install everything, run the offline demo
#   make test   - create .venv, install everything, run the test suite
#   make test-fast - the tests that need no trained model (the edit-test loop)
#   make docs   - build the documentation site into site/ (strict: a broken link fails)
# TORCH pins the torch/torchvision pair (other pairs may not import together); override it for
# another platform, e.g. make test TORCH="torch==2.9.1 torchvision==0.24.1".
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint docs install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[all]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/medvit-edge demo

test: install
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
	rm -rf $(VENV) models/demo site
