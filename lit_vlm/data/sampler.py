"""Exact ``--ckpt_path`` resume, mid-epoch included, through Lightning's stateful-dataloader protocol.

Each epoch's order is a pure function of (seed, epoch): Lightning calls ``set_epoch`` at every epoch start,
so a resumed run draws the same permutation as an uninterrupted one. ``ResumableLoader`` implements
``state_dict`` / ``load_state_dict``, so Lightning saves how many batches of the epoch it has handed out in
every checkpoint and gives that back on resume; the sampler then skips exactly those once. (A sized loader is
not prefetched by Lightning, so "handed out" is "trained on" when a checkpoint is written.)
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A seeded permutation per epoch, optionally split over DDP ranks, that can start mid-epoch.

    With ``num_replicas`` > 1 every rank draws the same permutation and takes every num_replicas-th row from
    its own offset, padded as torch's DistributedSampler pads (the first rows again) so that every rank runs
    the same number of steps. Being a DistributedSampler, Lightning keeps it instead of wrapping it in one of
    its own, which would shuffle again with its own seed and lose the resume position.
    """

    def __init__(self, num_samples: int, seed: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        # DistributedSampler.__init__ is not called: it wants a dataset and asks torch.distributed for sizes.
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.dataset_size, self.seed, self.batch_size = num_samples, seed, batch_size
        self.num_replicas, self.rank, self.shuffle, self.drop_last = num_replicas, rank, True, False
        self.num_samples = math.ceil(num_samples / num_replicas)  # this rank's rows per epoch
        self.total_size = self.num_samples * num_replicas
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, batches) to skip once, after a restore

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._skip = (epoch, batches_done)

    def pending_skip(self) -> int:
        """Batches the next iteration will skip (0 unless a restore points into this epoch)."""
        return self._skip[1] if self._skip is not None and self._skip[0] == self.epoch else 0

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.dataset_size, generator=generator).tolist()
        if self.num_replicas > 1:
            order += (order * math.ceil(self.total_size / max(1, len(order))))[: self.total_size - len(order)]
            order = order[self.rank : self.total_size : self.num_replicas]
        skip, self._skip = self.pending_skip(), None
        return iter(order[skip * self.batch_size :])

    def __len__(self) -> int:
        return self.num_samples


class ResumableLoader(DataLoader):
    """A DataLoader that Lightning checkpoints (it has ``state_dict`` / ``load_state_dict``).

    It takes DataLoader's own arguments, so Lightning can re-create it with another sampler (``overfit_batches``,
    a distributed sampler); only a ResumableSampler's position is saved, other samplers start from the top.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = 0

    def _resumable(self) -> bool:
        return isinstance(self.sampler, ResumableSampler)

    def __iter__(self):
        self.batches_done = self.sampler.pending_skip() if self._resumable() else 0
        for batch in super().__iter__():
            self.batches_done += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_done": self.batches_done} if self._resumable() else {}

    def load_state_dict(self, state: dict) -> None:
        if state and self._resumable():
            self.sampler.resume_at(state["epoch"], state["batches_done"])
