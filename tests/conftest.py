"""Shared pytest options.

`--kubeconfig` points suites marked `cluster` at a real Kubernetes cluster instead of the embedded
sandbox, so the contract, integration and end-to-end tests can be checked against the real thing.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        action="store",
        default=None,
        help="run cluster tests against this kubeconfig instead of the embedded sandbox",
    )


@pytest.fixture(scope="session")
def kubeconfig_option(request: pytest.FixtureRequest) -> str | None:
    """The --kubeconfig given on the command line, or None for the sandbox."""
    return request.config.getoption("--kubeconfig")
