"""Every Lightning callback of the kit, for a config's ``trainer.callbacks``:

    - class_path: lit_vlm.callbacks.PrecisionGuard
    - class_path: lit_vlm.callbacks.NonFiniteLossGuard
    - class_path: lit_vlm.callbacks.VLMThroughputMonitor
"""

from __future__ import annotations

import math

import torch
from lightning.fabric.utilities.throughput import measure_flops
from lightning.pytorch.callbacks import Callback, ThroughputMonitor

from lit_vlm.errors import UserError
from lit_vlm.gpu import NonFiniteLossError, check_precision, nonfinite_advice, trainer_precision

__all__ = ["NonFiniteLossGuard", "PrecisionGuard", "VLMThroughputMonitor"]


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


class PrecisionGuard(Callback):
    """At fit start: refuse 16-true, and refuse trainable weights that are not fp32 under mixed precision
    (GradScaler cannot unscale fp16 gradients; bf16 Adam state loses small updates)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        precision = check_precision(trainer_precision(trainer), training=True)
        if precision.endswith("-mixed"):
            bad = [(n, p.dtype) for n, p in pl_module.named_parameters() if p.requires_grad and p.dtype != torch.float32]
            if bad:
                name, dtype = bad[0]
                raise UserError(
                    f"{len(bad)} trainable weights are {str(dtype).replace('torch.', '')} (first: {name}) under "
                    f"trainer.precision={precision}: trainable weights must be float32. Set model.llm.dtype=float32, "
                    "or keep the half-precision LLM frozen (model.stage=align) or train it through model.llm.lora"
                )


class NonFiniteLossGuard(Callback):
    """Stop training with one clear line when the loss is NaN/inf for more than ``patience`` steps in a row.

    With 16-mixed, GradScaler already skips a step whose *gradients* overflow; a non-finite *loss* means the
    forward pass itself overflowed, which scaling cannot fix, so the run would only waste GPU time.
    """

    def __init__(self, patience: int = 0):
        super().__init__()
        if patience < 0:
            raise UserError(f"NonFiniteLossGuard patience={patience} must be >= 0")
        self.patience = patience
        self.bad_steps = 0

    def check(self, loss, step: int, precision: str) -> None:
        value = float(loss.detach().float()) if torch.is_tensor(loss) else float(loss)
        if math.isfinite(value):
            self.bad_steps = 0
            return
        self.bad_steps += 1
        if self.bad_steps > self.patience:
            raise NonFiniteLossError(
                f"train loss is {value} at step {step} with trainer.precision={precision}: "
                f"{nonfinite_advice(precision)}"
            )

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self.check(loss, trainer.global_step, trainer_precision(trainer))
