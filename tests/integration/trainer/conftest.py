"""Fixtures of the trainer's integration tests (helpers live in trainer_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One digits image folder for the session (the trainer writes it on first use)."""
    return tmp_path_factory.mktemp("digits-data") / "digits"
