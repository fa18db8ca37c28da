"""A DataLoader that Lightning can resume mid-epoch, in the same order as an unbroken run.

Shuffling is seeded by ``(seed, epoch)`` (Lightning calls ``set_epoch`` at each epoch start),
so the order of an epoch does not depend on the RNG state that came before it; and the
loader has ``state_dict``/``load_state_dict`` (Lightning's ``_Stateful`` protocol): a
checkpoint written at batch k of an epoch records it, and the resumed run skips the k
batches already trained on instead of starting the epoch over. Together with a seed and
deterministic algorithms, a run killed mid-epoch and resumed from its last checkpoint ends
with the same weights as a run never interrupted (``tests/test_faults.py``), as long as the
training itself draws no random numbers (no dropout, no random augmentation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler


class EpochSampler(Sampler[int]):
    """Indices in ``randperm(n, seed + epoch)`` order (or ``0..n-1``), optionally from an offset."""

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        """Skip the first ``skip`` samples of ``epoch`` (once)."""
        self._resume = (epoch, skip)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.n, generator=gen).tolist()
        else:
            order = list(range(self.n))
        start = 0
        if self._resume is not None:
            if self._resume[0] == self.epoch:
                start = self._resume[1]
            self._resume = None
        return iter(order[start:])

    def __len__(self) -> int:
        return self.n


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in Lightning checkpoints.

    Use it with an :class:`EpochSampler`. The saved position is the number of batches handed
    out this epoch: Lightning does not fetch ahead from loaders of known length, so when a
    checkpoint is written at the end of a training batch, that is the number trained on.
    """

    _yielded = 0

    def __iter__(self) -> Iterator[Any]:
        self._yielded = 0
        sampler = self.sampler
        resume = sampler._resume if isinstance(sampler, EpochSampler) else None
        if resume is not None and resume[0] == sampler.epoch:
            self._yielded = resume[1] // (self.batch_size or 1)
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        epoch = sampler.epoch if isinstance(sampler, EpochSampler) else 0
        return {"epoch": epoch, "batches_done": self._yielded}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if isinstance(self.sampler, EpochSampler) and self.batch_size:
            self.sampler.resume(int(state["epoch"]), int(state["batches_done"]) * self.batch_size)
