"""Lightning callbacks the configs name."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import ThroughputMonitor


class VLMThroughputMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor, told how to size our dict batches and how many FLOPs one step costs.

    It logs samples/s and, once ``flops_per_batch`` is known, FLOP/s (and MFU on GPUs whose peak Lightning
    knows). The training FLOPs are counted once, with torch's FLOP counter, on the first training batch.
    """

    def __init__(self, window_size: int = 20, **kwargs):
        super().__init__(batch_size_fn=lambda batch: len(batch["answers"]), window_size=window_size, **kwargs)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not hasattr(pl_module, "flops_per_batch"):
            pl_module.flops_per_batch = measure_flops(pl_module, lambda: pl_module.vlm(batch).loss, loss_fn=torch.Tensor.sum)
            pl_module.zero_grad(set_to_none=True)  # the count ran a backward pass: drop its gradients
