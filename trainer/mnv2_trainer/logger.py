"""Logging like MindCV: rank 0 logs to the console, every rank to its own file."""

from __future__ import annotations

import logging
import os
import sys

LOGGER_NAME = "mnv2_trainer"
_FORMAT = "[%(asctime)s] %(name)s %(levelname)s: %(message)s"


def log_file_name(rank: int) -> str:
    """``train_rank{rank}.log``: one file per rank under the output folder."""
    return f"train_rank{rank}.log"


def create_logger(rank: int = 0, log_dir: str | None = None, console: bool | None = None) -> logging.Logger:
    """Configure the package logger (idempotent).

    Args:
        rank: this process's rank; rank 0 logs to stdout unless ``console`` says otherwise.
        log_dir: when given, every rank appends to ``log_dir/train_rank{rank}.log`` (DEBUG and up,
            e.g. the sample indices of small shards).
        console: force the console handler on or off.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")
    if console if console is not None else rank == 0:
        stream = logging.StreamHandler(sys.stdout)
        stream.setLevel(logging.INFO)
        stream.setFormatter(fmt)
        logger.addHandler(stream)
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        fh = logging.FileHandler(os.path.join(log_dir, log_file_name(rank)))
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter(f"[%(asctime)s] rank{rank} %(levelname)s: %(message)s"))
        logger.addHandler(fh)
    return logger
