"""Sharding math of the data pipeline (no MindSpore)."""

from __future__ import annotations

import pytest
from mnv2_trainer.data import shard_indices, shard_size, steps_per_epoch


@pytest.mark.parametrize("n, shards", [(1437, 2), (1437, 8), (10, 3), (7, 7), (5, 8)])
def test_train_shards_cover_everything_equally(n: int, shards: int) -> None:
    parts = [shard_indices(n, shards, r, epoch=3, seed=42) for r in range(shards)]
    sizes = {len(p) for p in parts}
    assert sizes == {shard_size(n, shards, 0)}  # every rank runs the same number of steps
    seen = [i for p in parts for i in p]
    assert set(seen) == set(range(n))
    assert len(seen) - n < shards  # padding only to the next multiple of the rank count


def test_padding_is_only_to_even_out() -> None:
    parts = [shard_indices(1436, 2, r, epoch=0, seed=1) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])  # divisible: disjoint


@pytest.mark.parametrize("n, shards", [(360, 2), (361, 2), (10, 3), (3, 8)])
def test_val_shards_are_an_exact_partition(n: int, shards: int) -> None:
    parts = [shard_indices(n, shards, r, shuffle=False, pad=False) for r in range(shards)]
    flat = sorted(i for p in parts for i in p)
    assert flat == list(range(n))
    assert [len(p) for p in parts] == [shard_size(n, shards, r, pad=False) for r in range(shards)]


def test_epochs_reshuffle_the_same_way_on_every_rank() -> None:
    a0 = shard_indices(100, 2, 0, epoch=0, seed=7)
    a1 = shard_indices(100, 2, 0, epoch=1, seed=7)
    assert a0 != a1
    assert shard_indices(100, 2, 0, epoch=1, seed=7) == a1  # a resumed run sees the same order
    b1 = shard_indices(100, 2, 1, epoch=1, seed=7)
    assert not set(a1) & set(b1)


def test_limit_takes_a_subset_per_epoch() -> None:
    parts = [shard_indices(100, 2, r, epoch=0, seed=3, limit=40) for r in range(2)]
    assert [len(p) for p in parts] == [20, 20]
    assert len(set(parts[0]) | set(parts[1])) == 40


def test_steps_per_epoch_drops_the_remainder() -> None:
    assert steps_per_epoch(1437, 1, 32) == 44
    assert steps_per_epoch(1437, 2, 32) == 22  # 719 per rank
    assert steps_per_epoch(1_281_167, 8, 256) == 625  # MindCV's ImageNet number


def test_bad_shard_id() -> None:
    with pytest.raises(ValueError, match="shard_id"):
        shard_indices(10, 2, 2)
