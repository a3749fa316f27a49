"""Every trainer unit test starts from the same random state, whatever ran before it: weights that
`create_model` draws, numpy's global generator and MindSpore's dataset seed (all set by
`mindspore.set_seed`). Tests that need particular values still seed for themselves."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def seeded() -> Iterator[None]:
    # Only when MindSpore is already imported (by the test module): importing it here would cost
    # seconds for the tests that do not use it, and some check that it is not imported.
    ms = sys.modules.get("mindspore")
    if ms is not None:
        ms.set_seed(0)
    yield
