"""The trainer's error for bad inputs (config values, paths, checkpoints that do not fit)."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A problem with the run's inputs; the message names the key or path and the fix."""
