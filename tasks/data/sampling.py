"""Samplers: a shuffle that is a function of the epoch, and batches of images with similar aspect ratios."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """A random permutation per epoch, drawn from ``seed`` and the epoch alone (as DistributedSampler's), so a
    resumed run visits the images of its next epoch in the order the uninterrupted run does. Call
    :meth:`set_epoch` before each epoch."""

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


def aspect_ratio_groups(sizes: Sequence[tuple[int, int]]) -> list[int]:
    """Group 0 for landscape or square images (width >= height), 1 for portrait: detectron2's two groups."""
    return [0 if width >= height else 1 for width, height in sizes]


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches drawn in the base sampler's order, each from one group while the groups last.

    A batch is yielded as soon as one group has ``batch_size`` indices. The indices left over
    in the groups at the end of the epoch are mixed into the last batches, so every index is
    used once per epoch and the batch count is the plain one: ``len(sampler) // batch_size``
    with ``drop_last``, rounded up without. The base sampler may be a DistributedSampler; its
    ``set_epoch`` is reached through ``.sampler``.
    """

    def __init__(self, sampler: Sampler[int], groups: Sequence[int], batch_size: int, *, drop_last: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.groups = list(groups)
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for index in self.sampler:
            buffer = buffers.setdefault(self.groups[index], [])
            buffer.append(index)
            if len(buffer) == self.batch_size:
                yield buffer[:]
                buffer.clear()
        rest = [index for buffer in buffers.values() for index in buffer]
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        count = len(self.sampler)  # type: ignore[arg-type]
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)
