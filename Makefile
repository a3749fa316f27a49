# The README's two commands. Each sets itself up from nothing (Python 3.11 + the package registries).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# msrun starts `python <script>`: the venv's bin must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint install-test install-demo bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Stamp files make installing idempotent: pip runs again only when pyproject.toml changes,
# so MindSpore (~2.5 GB) is not reinstalled on every call.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[trainer,dev]'
	touch $@

$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[trainer,sandbox]'
	touch $@

install-test: $(VENV)/.installed-test
install-demo: $(VENV)/.installed-demo

## make demo: start the embedded cluster, the operator, and train MobileNetV2 on the digits data.
demo: install-demo
	$(BIN)/mnv2 demo

## make test: lint and the whole test suite (unit, contract, integration, end to end).
test: install-test lint
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
