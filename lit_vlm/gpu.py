"""Memory and precision on one GPU: choosing a precision, refusing the ones that cannot train, stopping on a
non-finite loss, turning an out-of-memory crash into advice, and analytic memory / FLOP estimates.

Precision, in one paragraph: a GPU with bf16 (Ampere or newer: A100, L4, H100, RTX 30xx+) trains in
``bf16-mixed``: bf16 has fp32's exponent range, so nothing overflows and no loss scaling is needed. A GPU
without bf16 (T4, V100, RTX 20xx) trains in ``16-mixed``: matmuls run in fp16 under autocast, LayerNorm,
softmax and the loss stay in fp32 (autocast's own lists), the trainable weights stay fp32, and Lightning's
GradScaler scales the loss so small fp16 gradients do not flush to zero and skips a step whose gradients
overflowed. ``16-true`` (fp16 weights, fp16 optimiser state, no scaler) is refused for training: an Adam update
of a weight near 1 is often below fp16's resolution (~1e-3) and is lost, and an activation above 65504 becomes
inf, then NaN - the classic "loss is NaN after a few hundred steps" on a T4.

The callbacks that use these checks (PrecisionGuard, NonFiniteLossGuard) live in lit_vlm.callbacks; the CLI
wraps every run in :func:`explain_oom`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from lit_vlm.errors import UserError

__all__ = [
    "NonFiniteLossError", "check_precision", "choose_precision", "explain_oom", "is_oom", "oom_message",
    "gpu_supports_bf16", "knobs_of", "nonfinite_advice", "MemoryEstimate", "estimate_train_memory",
    "train_step_flops",
]

# Lightning's precision names (and legacy aliases) -> canonical name
_ALIASES = {
    "16": "16-mixed", "16-mixed": "16-mixed", "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed",
    "32": "32-true", "32-true": "32-true", "64": "64-true", "64-true": "64-true",
    "16-true": "16-true", "bf16-true": "bf16-true", "transformer-engine": "transformer-engine",
    "transformer-engine-float16": "transformer-engine-float16",
}

# The knobs that change a training step's memory, as a user writes them in a config.
OOM_KNOBS = {
    "batch_size": "data.batch_size",
    "gradient_checkpointing": "model.llm.gradient_checkpointing",
    "precision": "trainer.precision",
    "lora": "model.llm.lora",
    "llm_dtype": "model.llm.dtype",
    "visual_tokens": "model.visual_tokens",
}


def gpu_supports_bf16(device: int | None = None) -> bool:
    """True when a CUDA GPU is present and computes in bf16 natively (compute capability >= 8.0)."""
    if not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def choose_precision(training: bool = True) -> str:
    """The precision to use on this machine: bf16-mixed on a bf16 GPU, 16-mixed on other GPUs, 32-true on CPU."""
    if torch.cuda.is_available():
        return "bf16-mixed" if gpu_supports_bf16() else "16-mixed"
    return "32-true"


def check_precision(precision: str | int | None, training: bool = True) -> str:
    """Canonical Lightning precision for ``precision`` ("auto"/None: :func:`choose_precision`); UserError when
    it cannot work: 16-true for training, or bf16 on a CUDA GPU without bf16."""
    if precision is None or str(precision) == "auto":
        return choose_precision(training)
    name = _ALIASES.get(str(precision))
    if name is None:
        raise UserError(
            f"trainer.precision={precision!r} is not a precision; allowed: auto, bf16-mixed, 16-mixed, 32-true, "
            "bf16-true"
        )
    if training and name == "16-true":
        raise UserError(
            "trainer.precision=16-true cannot train: fp16 weights lose Adam updates below fp16 resolution and "
            "overflow to inf/NaN without loss scaling; use 16-mixed (fp16 autocast + GradScaler, fp32 weights) "
            "on a GPU without bf16, or bf16-mixed on one with it"
        )
    if name.startswith("bf16") and torch.cuda.is_available() and not gpu_supports_bf16():
        raise UserError(
            f"trainer.precision={precision} needs a GPU with bf16 (A100, L4, H100, RTX 30xx or newer); "
            f"this {torch.cuda.get_device_name()} has none: use 16-mixed"
        )
    return name


def trainer_precision(trainer) -> str:
    return str(getattr(trainer, "precision", "32-true"))


class NonFiniteLossError(UserError):
    """The training loss became NaN or inf."""


def nonfinite_advice(precision: str) -> str:
    if precision.startswith("16"):
        return (
            "fp16 overflowed (values above 65504): use trainer.precision=bf16-mixed on a GPU with bf16, or "
            "32-true; with model.llm.dtype=float16 set it to float32; or lower model.optimizer.lr and set "
            "trainer.gradient_clip_val=1.0"
        )
    return "lower model.optimizer.lr, set trainer.gradient_clip_val=1.0, or check the data for empty answers"


# --- out of memory ---------------------------------------------------------------------------------------------
def is_oom(err: BaseException) -> bool:
    """A CUDA (or other accelerator) out-of-memory error, whatever class the backend raised it as."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def oom_message(err: BaseException, **current) -> str:
    """One line: what ran out, and which knobs to turn (with their current values when known)."""
    first = next((s.strip() for s in str(err).splitlines() if s.strip()), "out of memory")
    first = first.split(". Of the allocated memory")[0][:200]
    advice = []
    bs = current.get("batch_size")
    advice.append(f"lower data.batch_size (now {bs}; halve it and set trainer.accumulate_grad_batches to keep the "
                  "effective batch)" if bs else "lower data.batch_size (with trainer.accumulate_grad_batches)")
    if not current.get("gradient_checkpointing"):
        advice.append("set model.llm.gradient_checkpointing=true")
    precision = current.get("precision")
    if precision is None or str(precision) in ("32", "32-true"):
        advice.append("set trainer.precision=bf16-mixed (or 16-mixed on a GPU without bf16)")
    if not current.get("lora"):
        advice.append("train the LLM through LoRA: model.llm.lora={r: 16} with model.llm.dtype=bfloat16 "
                      "(or float16)")
    elif current.get("llm_dtype") in (None, "float32"):
        advice.append("store the frozen LLM in half precision: model.llm.dtype=bfloat16 (or float16)")
    if current.get("visual_tokens"):
        advice.append(f"or use fewer visual tokens (model.visual_tokens={current['visual_tokens']})")
    return f"the GPU ran out of memory ({first}); to fit: " + "; ".join(advice)


@contextmanager
def explain_oom(**current):
    """Re-raise an out-of-memory error as a one-line UserError naming the knobs (see :data:`OOM_KNOBS`).

        with explain_oom(batch_size=16, precision="bf16-mixed", gradient_checkpointing=False, lora=None):
            trainer.fit(module, datamodule)

    It yields the dict of knob values, so an entry point can fill it in once the objects exist (the CLI does:
    ``with explain_oom() as knobs: ... knobs.update(knobs_of(trainer, module, datamodule))``).
    """
    try:
        yield current
    except BaseException as err:  # noqa: BLE001 - only OOM is translated, everything else is re-raised as is
        if not is_oom(err):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise UserError(oom_message(err, **current)) from None


def knobs_of(trainer=None, module=None, datamodule=None) -> dict:
    """The current values of the memory knobs, read from live objects (for :func:`explain_oom`)."""
    out = {}
    if datamodule is not None:
        out["batch_size"] = getattr(datamodule, "batch_size", None)
    if trainer is not None:
        out["precision"] = trainer_precision(trainer)
    llm = getattr(getattr(module, "vlm", None), "llm_config", None)
    if llm is not None:
        out |= {"gradient_checkpointing": llm.gradient_checkpointing, "lora": llm.lora, "llm_dtype": llm.dtype}
    visual = getattr(getattr(module, "vlm", None), "visual_tokens", None)
    if visual is not None:
        out["visual_tokens"] = visual
    return out


# --- analytic estimates ----------------------------------------------------------------------------------------
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class MemoryEstimate:
    """Peak training memory of one step, in GiB, by component (an estimate, not a measurement)."""

    weights: float
    autocast_cache: float
    grads_and_optimizer: float
    activations: float
    logits: float
    overhead: float

    @property
    def total(self) -> float:
        return (self.weights + self.autocast_cache + self.grads_and_optimizer + self.activations + self.logits
                + self.overhead)

    def as_dict(self) -> dict:
        return {**self.__dict__, "total": self.total}


def estimate_train_memory(
    *, llm_params: int, trainable_params: int, hidden: int, layers: int, intermediate: int, kv_dim: int,
    vocab: int, batch: int, seq: int, llm_dtype: str = "float32", other_params: int = 0,
    precision: str = "bf16-mixed", gradient_checkpointing: bool = False, overhead_gib: float = 0.75,
) -> MemoryEstimate:
    """Peak memory of one training step of the LLM part (GiB), from its shape.

    - weights: LLM params x bytes(llm.dtype) + other params (tower, compressor, projector) in fp32.
    - autocast cache: under *-mixed, fp32 LLM weights are cast once per forward to half (+2 bytes/param).
    - gradients + AdamW: 4 + 8 bytes per trainable (fp32) parameter.
    - activations: per layer and token of a llama/qwen2 block in half precision with SDPA (no stored attention
      matrix): 16 h + 8 I + 4 kv_dim bytes, times layers; with gradient checkpointing only the fp32 layer inputs
      (4 h per layer) plus one layer being recomputed.
    - logits: half logits + the fp32 copy made by the loss + its gradient: 10 bytes per (token, vocab entry).
    """
    half = not precision.startswith(("32", "64"))
    act_bytes = 2 if half else 4
    tokens = batch * seq
    per_layer = tokens * (8 * hidden + 4 * intermediate + 2 * kv_dim) * act_bytes
    if gradient_checkpointing:
        activations = tokens * 4 * hidden * layers + per_layer
    else:
        activations = per_layer * layers
    gib = 1024**3
    cache = llm_params * 2 if precision.endswith("-mixed") and llm_dtype == "float32" else 0
    return MemoryEstimate(
        weights=(llm_params * _BYTES[llm_dtype] + other_params * 4) / gib,
        autocast_cache=cache / gib,
        grads_and_optimizer=trainable_params * 12 / gib,
        activations=activations / gib,
        logits=tokens * vocab * (act_bytes + 8) / gib,
        overhead=overhead_gib,
    )


def train_step_flops(*, llm_params_no_embed: int, hidden: int, layers: int, vocab: int, batch: int, seq: int,
                     llm_trains: str = "lora", gradient_checkpointing: bool = False, tower_params: int = 0,
                     patches: int = 0) -> float:
    """FLOPs of one training step (estimate).

    Forward of the LLM: 2 N_nonembed per token + attention 4 s h per token per layer + the lm_head 2 h vocab.
    Backward: 2x forward when the LLM trains fully; ~1x when it is frozen or trains through LoRA (input
    gradients only, weight gradients skipped); +1 forward with gradient checkpointing. The frozen tower runs
    forward only (2 N_tower per patch; 0 with a feature cache: pass tower_params=0).
    """
    tokens = batch * seq
    fwd = tokens * (2 * llm_params_no_embed + 4 * seq * hidden * layers + 2 * hidden * vocab)
    backward = 2.0 if llm_trains == "full" else 1.0
    recompute = 1.0 if gradient_checkpointing else 0.0
    return fwd * (1 + backward + recompute) + 2 * tower_params * patches * batch
