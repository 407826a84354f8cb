"""Assignment 2, reference solution: the paper's inference-cost model, checked against torch's FLOP counter."""

from __future__ import annotations

from torch import nn

from lit_vlm.flops import measure_prefill


def non_embedding_params(llm: nn.Module) -> int:
    """N: every LLM parameter except the input embeddings and an untied lm_head (a tied one is the same tensor)."""
    emb = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings()
    skip = {id(emb)} | ({id(head.weight)} if head is not None else set())
    return sum(p.numel() for p in llm.parameters() if id(p) not in skip)


def text_tokens(batch: dict) -> float:
    """Q: mean number of prompt tokens per example, not counting the one <image> placeholder."""
    return float((batch["prompt_mask"].sum(1) - 1).float().mean())


def inference_flops(n_params: float, q: float, v: float) -> float:
    """The paper's cost model: 2 N (Q + V)."""
    return 2.0 * n_params * (q + v)


def counted_prefill_flops(llm: nn.Module, q: float, v: float) -> float:
    """What torch's FLOP counter sees for one example's prefill of T = Q + V positions (eager attention):
    every weight matrix once per position, the two attention matmuls (Q K^T and A V, quadratic in T) in every
    layer, and one lm_head row (only the last position's logits are computed)."""
    cfg = llm.config
    t = q + v
    emb = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings()
    skip = {id(emb)} | ({id(head.weight)} if head is not None else set())
    matrices = sum(p.numel() for p in llm.parameters() if p.dim() >= 2 and id(p) not in skip)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    d_attn = cfg.num_attention_heads * head_dim
    attention = cfg.num_hidden_layers * 2 * (2 * t * t * d_attn)
    lm_head = 2 * cfg.hidden_size * emb.shape[0]
    return 2.0 * matrices * t + attention + lm_head


def flops_ratio(vlm, batch: dict) -> float:
    """measured / analytic for one batch: lit_vlm.flops.measure_prefill's counted FLOPs per example over
    2 N (Q + V) computed with the functions above."""
    measured = measure_prefill(vlm, batch, repeats=1).measured_flops
    return measured / inference_flops(non_embedding_params(vlm.llm), text_tokens(batch), vlm.visual_tokens)
