# The trainer image: MindSpore 2.10, the mnv2 trainer and msrun on a base with Python 3.11, run by the
# operator's pods as `python -m mnv2_trainer.launch msrun ... python -m mnv2_trainer.train ...`.
#
#   docker build -f docker/trainer.Dockerfile \
#       --build-arg BASE_IMAGE=<a CANN image with Python 3.11 matching your NPU driver> \
#       -t <registry>/mnv2-trainer:0.1.0 .
#
# Build from the repository root. BASE_IMAGE has no default on purpose: for Ascend NPUs it is a CANN
# image whose version matches the driver installed on your nodes; for CPU jobs any image with Python
# 3.11 as `python` and pip (python:3.11-slim-bookworm, or the Debian base that
# `python -m mnv2_cluster.imagebuild` makes). See docs/install.md.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# msrun starts each worker as `python ...`: the base's Python must be 3.11 (the package requires it)
# and reachable as `python`.
RUN python -c "import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else 'BASE_IMAGE must provide Python 3.11 as python, found ' + sys.version)"

# On CPU the trainer compiles a small C++ kernel for depthwise convolutions at first use
# (mnv2_trainer.cpu_depthwise; without a compiler it falls back to MindSpore's much slower kernels), and
# msrun --bind_core needs taskset: add g++ and util-linux where the base has apt-get and lacks them.
RUN if ! command -v g++ >/dev/null || ! command -v taskset >/dev/null; then \
      if command -v apt-get >/dev/null; then \
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ util-linux \
        && rm -rf /var/lib/apt/lists/*; \
      else echo "WARNING: no g++ or taskset and no apt-get: install them in BASE_IMAGE"; fi; \
    fi

WORKDIR /src
# The `trainer` extra: MindSpore 2.10 (PyPI's unified wheel, which drives Ascend NPUs through the CANN
# toolkit of the base image), numpy < 2, pillow, scikit-learn (digits data), kubernetes (status reports).
# The dependencies are installed from pyproject.toml alone first (with an empty README.md, which the
# metadata names), so a change of the code or the README rebuilds only the layers after it (MindSpore
# is ~2.5 GB).
COPY pyproject.toml ./
RUN --mount=type=cache,id=mnv2-pip,target=/root/.cache/pip \
    touch README.md && pip install ".[trainer]"
COPY README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN --mount=type=cache,id=mnv2-pip,target=/root/.cache/pip \
    pip install --no-deps --force-reinstall . && rm -rf /src

# msrun (installed by MindSpore) must be on PATH; the trainer module must import.
RUN command -v msrun && command -v python \
 && python -c "import mindspore, mnv2_trainer.train; print('mindspore', mindspore.__version__)"

# The operator starts `python -m mnv2_trainer.launch msrun ...` directly, without a shell, so CANN's
# environment (ASCEND_HOME_PATH, LD_LIBRARY_PATH, PYTHONPATH for its Python modules, ...) must be set with
# ENV in the image, not only by sourcing set_env.sh in a shell profile. CANN base images usually do this;
# warn when it looks unset. The launcher is PID 1: it relays the kubelet's SIGTERM to msrun as SIGINT, so
# the image needs no init (tini) of its own.
# msrun --bind_core=True (the default of Ascend jobs) needs taskset, and lspci for NUMA-affine binding.
RUN command -v taskset >/dev/null || echo "WARNING: no taskset (util-linux): msrun --bind_core has no effect"; \
    command -v lspci >/dev/null || echo "WARNING: no lspci (pciutils): msrun --bind_core ignores NUMA affinity"
RUN if [ -z "${ASCEND_HOME_PATH:-}${ASCEND_TOOLKIT_HOME:-}" ]; then \
      echo "WARNING: ASCEND_HOME_PATH/ASCEND_TOOLKIT_HOME unset: add ENV lines equivalent to CANN's set_env.sh"; \
    fi

# Checkpoints, logs and data are volumes mounted by the operator (/output, /data). CPU jobs run as
# uid 1000 (Ascend jobs as the image's user): the working directory, where MindSpore may write scratch
# files, is writable for both.
WORKDIR /workspace
RUN chmod 1777 /workspace
