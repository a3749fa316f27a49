# The trainer image: an Ascend MindSpore base (CANN toolkit + Python 3.11) with the mnv2 trainer,
# run by the operator's pods as `msrun ... python -m mnv2_trainer.train ...`.
#
#   docker build -f docker/trainer.Dockerfile \
#       --build-arg BASE_IMAGE=<a CANN image with Python 3.11 matching your NPU driver> \
#       -t <registry>/mnv2-trainer:0.1.0 .
#
# Build from the repository root. BASE_IMAGE has no default on purpose: the CANN version must match the
# driver installed on your Ascend nodes (see docs/install.md). It could not be built where it was
# written (no container engine there).
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

# Checkpoints, logs and data are volumes mounted by the operator (/output, /data).
WORKDIR /workspace
