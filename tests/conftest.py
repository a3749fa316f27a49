"""Shared pytest options.

`--kubeconfig` points suites marked `cluster` at another Kubernetes cluster instead of the local
control plane they start (`mnv2_cluster`); tests that need the local one (its nodes, its audit
log, identities made from its CA) start it anyway or skip, saying so.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        action="store",
        default=None,
        help="run cluster tests against this kubeconfig instead of the local control plane",
    )


@pytest.fixture(scope="session")
def kubeconfig_option(request: pytest.FixtureRequest) -> str | None:
    """The --kubeconfig given on the command line, or None for the local control plane."""
    return request.config.getoption("--kubeconfig")
