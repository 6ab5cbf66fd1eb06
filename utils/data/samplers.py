"""The training sampler: an epoch's order and every sample's augmentation seed as a function of (seed, epoch).

Why: the training DataLoader keeps its worker processes across epochs (``persistent_workers``). Forking workers
anew each epoch made the training process copy every heap page it wrote afterwards while the children lived
(copy-on-write), which cost ~1.2 s at the first step of every epoch on yolov5n at 320 and slowed validation
2-3x (README, "Training loop"). Persistent workers keep their own copy of the dataset and their own random
streams, so what changes between epochs travels with the indices instead: the sampler runs in the training
process, reads ``dataset.indices`` (resampled by --image-weights) there, and sends (index, seed) pairs; the
dataset seeds its augmentation from the pair. The result does not depend on the number of workers, and a resumed
run, told its epoch through ``set_epoch``, draws exactly what the uninterrupted run drew.
"""
from __future__ import annotations

from collections.abc import Iterator, Sized

import numpy as np
import torch
from torch.utils.data import Sampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample of one epoch, well mixed (no two nearby triples share streams)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class EpochSeededSampler(Sampler):
    """Yields (dataset index, augmentation seed) for one epoch: shuffled by a generator seeded from
    (seed, epoch), or the order of ``inner`` (e.g. a DistributedSampler, given the same epoch)."""

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int = 0, inner: Sampler | None = None):
        self.dataset, self.shuffle, self.seed, self.inner = dataset, shuffle, int(seed), inner
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner) if self.inner is not None else len(self.dataset)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.dataset)
        if self.inner is not None:
            order = list(self.inner)
        elif self.shuffle:
            g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1 & 0xFFFFFFFF))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        indices = getattr(self.dataset, "indices", None)  # --image-weights resamples these between epochs
        for i in order:
            j = int(indices[i]) if indices is not None else i
            yield j, sample_seed(self.seed, self.epoch, i)
