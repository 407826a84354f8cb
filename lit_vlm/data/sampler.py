"""Exact ``--ckpt_path`` resume, mid-epoch included, through Lightning's stateful-dataloader protocol.

Each epoch's order is a pure function of (seed, epoch): Lightning calls ``set_epoch`` at every epoch start,
so a resumed run draws the same permutation as an uninterrupted one. ``ResumableLoader`` implements
``state_dict`` / ``load_state_dict``, so Lightning saves how many batches of the epoch it has handed out in
every checkpoint and gives that back on resume; the sampler then skips exactly those once. (A sized loader is
not prefetched by Lightning, so "handed out" is "trained on" when a checkpoint is written.)
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, seed: int, batch_size: int):
        self.num_samples, self.seed, self.batch_size = num_samples, seed, batch_size
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
        order = torch.randperm(self.num_samples, generator=generator).tolist()
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
