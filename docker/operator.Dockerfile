# The operator image: kopf + the mnv2 operator, no MindSpore (the operator only renders pods and
# patches status; training runs in the trainer image).
#
#   docker build -f docker/operator.Dockerfile -t <registry>/mnv2-operator:0.1.0 .
#
# Build from the repository root (the build context needs pyproject.toml, README.md, operator/ and
# trainer/). BASE_IMAGE is any image with Python 3.11 as `python` and pip; `python -m mnv2_cluster.imagebuild`
# builds this file on a Debian base it makes itself (see docs/install.md).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# A fixed numeric non-root user, so the chart's runAsNonRoot/runAsUser: 10001 holds.
RUN groupadd --gid 10001 mnv2 \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mnv2

WORKDIR /src
# Core dependencies only (kopf, kubernetes, pydantic, jinja2, PyYAML): no extras, so no MindSpore or
# numpy. They are installed from pyproject.toml alone first (with an empty README.md, which the
# metadata names), so a change of the code rebuilds only the layers after them.
COPY pyproject.toml ./
RUN --mount=type=cache,id=mnv2-pip,target=/root/.cache/pip \
    touch README.md && pip install .
# The trainer package comes along because the operator resolves recipes with mnv2_trainer.config,
# which imports neither. The check fails the build if the operator ever imports MindSpore, numpy, the
# demo package, the local cluster's launcher, matplotlib or a test helper. pip compiles the modules to
# bytecode at install time, so a read-only root filesystem costs nothing at start.
COPY README.md ./
COPY operator/ operator/
COPY trainer/ trainer/
RUN --mount=type=cache,id=mnv2-pip,target=/root/.cache/pip \
    pip install --no-deps --force-reinstall . \
 && python -c "import sys, mnv2_operator.cli, mnv2_operator.handlers, mnv2_operator.render, mnv2_operator.show, mnv2_trainer.config; bad = {'mindspore', 'numpy', 'mindcv', 'mnv2_demo', 'mnv2_cluster', 'matplotlib', 'support'} & set(sys.modules); sys.exit(f'operator image imports {bad}') if bad else None" \
 && rm -rf /src

USER 10001:10001
WORKDIR /tmp

# kopf's liveness endpoint (/healthz), probed by the chart's Deployment.
EXPOSE 8080
ENTRYPOINT ["mnv2"]
CMD ["operator", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]
