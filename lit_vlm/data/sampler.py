"""A shuffling sampler that makes ``--ckpt_path`` resume exactly, mid-epoch included.

Each epoch's order is a pure function of (seed, epoch): Lightning calls ``set_epoch`` at every epoch start,
so a resumed run draws the same permutation as an uninterrupted one. The datamodule stores how many batches
of the current epoch were done in the checkpoint; the sampler skips exactly those once after a restore.
"""

from __future__ import annotations

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, batch_size: int):
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches) to skip once, after a restore

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._skip = (epoch, batches_done)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1] * self.batch_size :]
            self._skip = None
        return iter(order)

    def __len__(self) -> int:
        return self.num_samples
