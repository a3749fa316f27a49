"""Helpers shared by the test suites (imported as `support.<module>`; tests/ is on sys.path)."""

from pathlib import Path

#: The checkout the tests run from: the packages themselves never look for it.
REPO_ROOT = Path(__file__).resolve().parents[2]
