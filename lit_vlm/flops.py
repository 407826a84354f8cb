"""Inference cost: the paper's analytic model and what torch actually counts.

The paper charges a VLM ``2 * N * (Q + V)`` FLOPs per answer's prefill: N LLM parameters (embeddings
excluded: a lookup is not a matmul), Q text tokens and V visual tokens. The vision tower is not counted
(it is shared and comparatively small). ``measure_prefill`` runs the real LLM on a real spliced batch under
torch's FLOP counter so the analytic model is checked rather than assumed: the two differ by attention's
``Q K^T`` and ``A V`` matmuls (quadratic in sequence length) and by the one lm_head row we keep.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from lit_vlm.errors import UserError


def inference_flops(llm_params: float, text_tokens: float, visual_tokens: float) -> float:
    """The paper's cost model: ``2 N (Q + V)`` FLOPs for one prefill."""
    if llm_params <= 0 or visual_tokens < 0 or text_tokens < 0:
        raise UserError(
            f"inference_flops needs N > 0, Q >= 0, V >= 0; got N={llm_params}, Q={text_tokens}, V={visual_tokens}"
        )
    return 2.0 * llm_params * (text_tokens + visual_tokens)


@dataclass
class PrefillCost:
    """Measured cost of one batch's prefill, per example."""

    analytic_flops: float
    """2 N (Q + V) with the batch's mean Q."""
    measured_flops: float
    """FLOPs counted by torch.utils.flop_counter on the LLM prefill (vision tower excluded, as in the paper)."""
    ratio: float
    """measured / analytic: 1.0 means the cost model is exact."""
    latency_s: float
    """Median wall time of the prefill per batch (vision features precomputed), in seconds."""
    text_tokens: float
    """Mean text tokens Q per example (prompt without the image placeholder)."""
    visual_tokens: int
    llm_params: int

    def to_dict(self) -> dict:
        return asdict(self)


def _prefill_inputs(vlm, batch: dict) -> dict:
    features = vlm.encode_images(batch["pixel_values"])
    visual = vlm.visual_embeds(features, batch.get("question_ids"), batch.get("question_mask"))
    return vlm.splice(batch["prompt_ids"], batch["prompt_mask"], visual)


def _prefill(vlm, inputs: dict):
    # logits_to_keep=1: a real prefill only needs the next-token logits, not the whole vocabulary per position.
    return vlm.llm(
        inputs_embeds=inputs["inputs_embeds"],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"],
        logits_to_keep=1,
        use_cache=False,
    )


def _one(inputs: dict, i: int) -> dict:
    """Example i alone, its left padding cut off: counted FLOPs then cover real tokens only."""
    keep = inputs["attention_mask"][i].bool()
    return {k: v[i : i + 1, keep] if v.dim() == 2 else v[i : i + 1, keep, :] for k, v in inputs.items() if k != "labels"}


@torch.no_grad()
def measure_prefill(vlm, batch: dict, repeats: int = 3, examples: int = 8) -> PrefillCost:
    """Count FLOPs of the LLM prefill (prompt + visual tokens, last logits only) per example, and time the
    prefill of the whole batch.

    FLOPs are counted on up to ``examples`` single, unpadded examples with eager attention: torch's counter
    sees no FLOPs inside fused SDPA kernels on CPU, and padding is a batching cost, not the model's.
    """
    was_training = vlm.training
    vlm.eval()
    inputs = _prefill_inputs(vlm, batch)
    count = min(examples, inputs["inputs_embeds"].shape[0])
    attn = vlm.llm.config._attn_implementation
    vlm.llm.set_attn_implementation("eager")
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            for i in range(count):
                _prefill(vlm, _one(inputs, i))
    finally:
        vlm.llm.set_attn_implementation(attn)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _prefill(vlm, inputs)
        times.append(time.perf_counter() - start)
    vlm.train(was_training)

    text_tokens = float((batch["prompt_mask"][:count].sum(1) - 1).float().mean())  # minus the image placeholder
    n = vlm.num_llm_params(with_embeddings=False)
    analytic = inference_flops(n, text_tokens, vlm.visual_tokens)
    measured = counter.get_total_flops() / count
    return PrefillCost(
        analytic_flops=analytic,
        measured_flops=measured,
        ratio=measured / analytic,
        latency_s=statistics.median(times),
        text_tokens=text_tokens,
        visual_tokens=vlm.visual_tokens,
        llm_params=n,
    )
