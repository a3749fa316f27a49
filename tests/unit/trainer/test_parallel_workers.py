"""num_parallel_workers is lowered to the cores the process may use (MindSpore refuses more)."""

from __future__ import annotations

from mnv2_trainer.data import available_cores, clamp_parallel_workers


def test_lowered_to_the_cores_with_a_note() -> None:
    cfg, note = clamp_parallel_workers({"num_parallel_workers": 8, "batch_size": 32}, cores=2)
    assert cfg == {"num_parallel_workers": 2, "batch_size": 32}
    assert note == "num_parallel_workers 8 is more than the 2 CPU core(s) available to this process: using 2"


def test_kept_when_the_cores_suffice() -> None:
    original = {"num_parallel_workers": 2}
    cfg, note = clamp_parallel_workers(original, cores=2)
    assert cfg is original and note is None


def test_available_cores_is_the_affinity_mask() -> None:
    import os

    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert available_cores() == expected
