"""Inference cost: the paper's analytic model and what torch actually counts.

The paper charges a VLM ``2 * N * (Q + V)`` FLOPs per answer's prefill: N LLM parameters (embeddings
excluded: a lookup is not a matmul), Q text tokens and V visual tokens. The vision tower is not counted
(it is shared and comparatively small). ``measure_prefill`` runs the real LLM on a real spliced batch under
torch's FLOP counter so the analytic model is checked rather than assumed: the two differ by attention's
``Q K^T`` and ``A V`` matmuls (quadratic in sequence length) and by the one lm_head row we keep.

The paper's cost leaves out everything before the LLM's prefill. ``measure_cost`` keeps a full ledger per
example, each part analytic (2 FLOPs per multiply-add of the weights a token passes through, attention's
score matmuls left out, as in 2 N (Q + V)) and counted (torch's FLOP counter, eager attention):

    vision      the frozen tower: 2 N_vision (prefix + P') for P' patches (fewer for ``downsample``); the patch
                embedding's weights count for the P' patches only
    compressor  the compressor (``Compressor.analytic_flops``) and the projector, 2 N_projector V
    question    QueCC's extra LLM pass over the bare question that makes its query: 2 N Q_question (else 0)
    prefill     the paper's 2 N (Q + V)
    full        the sum of the four
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
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


# --- the full ledger --------------------------------------------------------------------------------------
_LOOKUPS = ("position_embedding", "class_embedding", "cls_token", "mask_token")  # added, not multiplied


def vision_matmul_params(tower) -> tuple[int, int]:
    """(patch embedding, the rest): the tower's parameters less position and class embeddings, split because
    the patch embedding sees only the patches while the layers see the prefix (CLS) token too."""
    model = getattr(tower, "tower", tower).model  # a grid's CachedTower wraps the real tower
    params = [(n, p.numel()) for n, p in model.named_parameters() if not any(k in n for k in _LOOKUPS)]
    patch = sum(k for n, k in params if "patch_embedding" in n)
    return patch, sum(k for _, k in params) - patch


@dataclass
class InferenceCost(PrefillCost):
    """The whole inference ledger per example: the prefill's fields plus what the paper leaves out."""

    vision_flops: float = 0.0
    """Analytic 2 N_vision (prefix + patches) of the frozen tower at the resolution it runs at (the patch
    embedding: patches only)."""
    measured_vision_flops: float = 0.0
    compressor_flops: float = 0.0
    """Analytic FLOPs of the compressor and the projector."""
    measured_compressor_flops: float = 0.0
    question_flops: float = 0.0
    """Analytic 2 N Q_question of QueCC's question pass (0 for compressors that take no query)."""
    measured_question_flops: float = 0.0
    full_flops: float = 0.0
    """vision + compressor + question + the paper's 2 N (Q + V)."""
    measured_full_flops: float = 0.0
    full_latency_s: float = 0.0
    """Median wall time per batch of the whole path: tower, question pass, compressor, projector, prefill."""


@contextmanager
def _eager(*models):
    """Eager attention inside the block (torch's counter sees no FLOPs in fused SDPA kernels on CPU)."""
    before = [m.config._attn_implementation for m in models]
    for m in models:
        m.set_attn_implementation("eager")
    try:
        yield
    finally:
        for m, impl in zip(models, before):
            m.set_attn_implementation(impl)


def _counted(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


@torch.no_grad()
def measure_cost(vlm, batch: dict, repeats: int = 3, examples: int = 8) -> InferenceCost:
    """``measure_prefill`` plus the vision tower, the compressor (+ projector) and QueCC's question pass, each
    analytic and counted per example, and the latency of the whole path."""
    cached = vlm.vision_tower
    vlm.vision_tower = getattr(cached, "tower", cached)  # the real tower, never a cache lookup
    try:
        return _measure_cost(vlm, batch, repeats, examples)
    finally:
        vlm.vision_tower = cached


def _measure_cost(vlm, batch: dict, repeats: int, examples: int) -> InferenceCost:
    prefill = measure_prefill(vlm, batch, repeats=repeats, examples=examples)
    was_training = vlm.training
    vlm.eval()
    count = min(examples, batch["pixel_values"].shape[0])
    pixels = batch["pixel_values"][:count]
    tower = vlm.vision_tower
    with _eager(tower.model):
        vision = _counted(lambda: vlm.encode_images(pixels)) / count
    features = vlm.encode_images(pixels).to(vlm.projector[0].weight.dtype)
    patch_params, layer_params = vision_matmul_params(tower)
    patches = features.shape[2]
    vision_analytic = 2.0 * (patch_params * patches + layer_params * (tower.num_prefix_tokens + patches))

    query, question, question_analytic = None, 0.0, 0.0
    if vlm.compressor.needs_query:
        ids, mask = batch["question_ids"][:count], batch["question_mask"][:count]
        with _eager(vlm.llm):  # one unpadded question at a time: padding is batching's cost, not the model's
            question = sum(_counted(lambda i=i: vlm.question_query(ids[i : i + 1, mask[i].bool()]))
                           for i in range(count)) / count
        query = vlm.question_query(ids, mask)
        question_analytic = 2.0 * vlm.num_llm_params(with_embeddings=False) * float(mask.sum(1).float().mean())
    with torch.enable_grad():  # torch's module tracker trips on a no-grad view of a parameter (perceiver)
        compressor = _counted(lambda: vlm.projector(vlm.compressor(features, query))) / count
    projector = sum(m.weight.numel() for m in vlm.projector if isinstance(m, torch.nn.Linear))
    compressor_analytic = vlm.compressor.analytic_flops() + 2.0 * projector * vlm.visual_tokens

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _prefill(vlm, _prefill_inputs(vlm, batch))
        times.append(time.perf_counter() - start)
    vlm.train(was_training)
    fields = prefill.to_dict()
    return InferenceCost(
        **fields,
        vision_flops=vision_analytic, measured_vision_flops=vision,
        compressor_flops=compressor_analytic, measured_compressor_flops=compressor,
        question_flops=question_analytic, measured_question_flops=question,
        full_flops=vision_analytic + compressor_analytic + question_analytic + prefill.analytic_flops,
        measured_full_flops=vision + compressor + question + prefill.measured_flops,
        full_latency_s=statistics.median(times),
    )
