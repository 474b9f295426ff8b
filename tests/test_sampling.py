"""Aspect-ratio grouped batches: every index once, one group per batch while groups last, exact length."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler, RandomSampler, TensorDataset

from tasks.data.sampling import EpochSampler, GroupedBatchSampler, aspect_ratio_groups
from tasks.engine import make_loader


def test_aspect_ratio_groups() -> None:
    assert aspect_ratio_groups([(640, 480), (480, 640), (300, 300), (10, 11)]) == [0, 1, 0, 1]


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("count,batch_size", [(23, 4), (24, 4), (5, 8), (17, 1)])
def test_grouped_batches(count: int, batch_size: int, drop_last: bool) -> None:
    groups = [(i * 7) % 3 % 2 for i in range(count)]  # an irregular mix of two groups
    sampler = RandomSampler(range(count), generator=torch.Generator().manual_seed(1))
    batcher = GroupedBatchSampler(sampler, groups, batch_size, drop_last=drop_last)
    batches = list(batcher)
    assert len(batches) == len(batcher)
    used = [i for batch in batches for i in batch]
    assert len(used) == len(set(used))
    expected = count - count % batch_size if drop_last else count
    assert len(used) == expected
    whole = [b for b in batches if len(b) == batch_size]
    mixed = [b for b in whole if len({groups[i] for i in b}) > 1]
    # Only the end-of-epoch leftovers (fewer than batch_size per group) can mix groups.
    assert sum(len(b) for b in mixed) < 2 * batch_size
    assert all(len(b) == batch_size for b in batches[:-1])


def test_grouped_batches_follow_the_sampler_order() -> None:
    groups = [0, 1, 0, 1, 0, 1, 1, 1]
    batches = list(GroupedBatchSampler(range(8), groups, 2, drop_last=False))  # type: ignore[arg-type]
    assert batches == [[0, 2], [1, 3], [5, 6], [4, 7]]


def test_grouped_batches_with_a_distributed_sampler() -> None:
    groups = [i % 2 for i in range(20)]
    seen = []
    for rank in range(2):
        shard = DistributedSampler(range(20), num_replicas=2, rank=rank, shuffle=True, seed=3)  # type: ignore[arg-type]
        shard.set_epoch(1)
        batches = list(GroupedBatchSampler(shard, groups, 3, drop_last=True))
        assert all(len({groups[i] for i in b}) == 1 for b in batches[:2])
        seen += [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) == 18


def test_make_loader_groups_training_batches() -> None:
    data = TensorDataset(torch.arange(30))
    groups = [int(i % 3 == 0) for i in range(30)]
    loader = make_loader(data, batch_size=5, train=True, workers=0, collate_fn=list, groups=groups)
    batches = [[int(item[0]) for item in batch] for batch in loader]
    assert len(batches) == len(loader) == 6
    assert sum(len({groups[i] for i in b}) == 1 for b in batches) >= 5
    assert isinstance(loader.batch_sampler.sampler, EpochSampler)  # type: ignore[union-attr]
    evaluation = make_loader(data, batch_size=5, train=False, workers=0, collate_fn=list, groups=groups)
    assert [int(item[0]) for batch in evaluation for item in batch] == list(range(30))
