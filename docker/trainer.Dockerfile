# The trainer image: an Ascend MindSpore base (CANN toolkit + Python 3.11) with the mnv2 trainer,
# run by the operator's pods as `msrun ... python -m mnv2_trainer.train ...`.
#
#   docker build -f docker/trainer.Dockerfile \
#       --build-arg BASE_IMAGE=<a CANN image with Python 3.11 matching your NPU driver> \
#       -t <registry>/mnv2-trainer:0.1.0 .
#
# Build from the repository root. BASE_IMAGE has no default on purpose: the CANN version must match the
# driver installed on your Ascend nodes (see docs/install.md). The test suite checks this file against
# the package but does not build it.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# msrun starts each worker as `python ...`: the base's Python must be 3.11 (the package requires it)
# and reachable as `python`.
RUN python -c "import sys; sys.exit(None if sys.version_info[:2] == (3, 11) else 'BASE_IMAGE must provide Python 3.11 as python, found ' + sys.version)"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
# The `trainer` extra: MindSpore 2.10 (PyPI's unified wheel, which drives Ascend NPUs through the CANN
# toolkit of the base image), numpy < 2, pillow, scikit-learn (digits data), kubernetes (status reports).
RUN pip install ".[trainer]" && rm -rf /src

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
