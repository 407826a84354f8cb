"""The training loss with the LLM's last layer run only where the loss reads it.

Position t's logits are read by the loss only when token t + 1 is an answer token. Every layer but the last must
still run at every position (the next layer's keys and values read them), but the last layer's output at any
other position goes nowhere: its queries, attention output, feed-forward, final norm and lm_head there are
wasted. A grid cell's sequence is V visual tokens, a question and a 2-3 token answer, so at V = 64 that is most
of the last layer. ``answer_logits`` runs the layers below as the model does (Hugging Face's own modules), then the
last layer's keys and values at every position and everything else at the answer positions only.

The loss is the model's own (the mean cross-entropy of the answer tokens), equal up to float rounding: the
matmuls sum in another order, so training that uses it is a different (equally valid) run, not a bitwise one.
Llama-style decoders only (``supports_answer_loss``); any other model keeps the full forward.
"""

from __future__ import annotations

import torch
from torch import nn

# decoder layers whose last layer answer_loss re-runs by hand: pre-norm attention + gated MLP, rotary on q and k,
# no per-head q/k norms, no sliding window (their HF classes share LlamaDecoderLayer's structure)
_LLAMA_LIKE = {"llama", "mistral", "qwen2"}


def supports_answer_loss(llm: nn.Module) -> bool:
    """Whether ``answer_loss`` can run this causal LM (a Llama-style decoder with SDPA or eager attention)."""
    config = getattr(llm, "config", None)
    if config is None or config.model_type not in _LLAMA_LIKE:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False  # the hand-written mask below is plain causal
    if config._attn_implementation not in ("sdpa", "eager") or getattr(config, "attention_dropout", 0.0):
        return False  # other kernels, or attention dropout, which the hand-written attention below leaves out
    base = getattr(llm, "model", None)
    layers = getattr(base, "layers", None)
    if not layers or not all(hasattr(base, a) for a in ("rotary_emb", "norm")):
        return False
    last = layers[-1]
    attn = getattr(last, "self_attn", None)
    return all(hasattr(attn, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")) and \
        not hasattr(attn, "q_norm") and hasattr(last, "mlp")


def answer_logits(llm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                  position_ids: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits at the positions the loss reads and their targets ([B, K, vocab], [B, K]; K = the most answer
    tokens of a row, shorter rows padded with target -100), with the last layer run at those positions only.
    Position t predicts token t + 1, the model's own shift; answer tokens are those with labels != -100."""
    from transformers.masking_utils import create_causal_mask
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    targets = nn.functional.pad(labels, (0, 1), value=-100)[:, 1:]  # [B, T]: what position t predicts
    read = targets != -100
    B, T, _ = inputs_embeds.shape
    K = max(1, int(read.sum(1).max()))
    # each row's read positions first, in order; a row with fewer repeats some position with target -100
    order = torch.sort((~read).to(torch.int8), dim=1, stable=True).indices[:, :K]  # [B, K]
    kept_targets = targets.gather(1, order).masked_fill(~read.gather(1, order), -100)

    base = llm.model
    mask = create_causal_mask(config=base.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              cache=None, position_ids=position_ids)
    cos, sin = base.rotary_emb(inputs_embeds, position_ids=position_ids)
    hidden = inputs_embeds
    for layer in base.layers[:-1]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), position_ids=position_ids)

    last, attn = base.layers[-1], base.layers[-1].self_attn
    x = last.input_layernorm(hidden)
    pick = order[..., None]
    q = attn.q_proj(x.gather(1, pick.expand(-1, -1, x.shape[-1]))).view(B, K, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, -1, attn.head_dim).transpose(1, 2)  # keys and values at every position
    v = attn.v_proj(x).view(B, T, -1, attn.head_dim).transpose(1, 2)
    q, _ = apply_rotary_pos_emb(q, q, cos.gather(1, pick.expand(-1, -1, cos.shape[-1])),
                                sin.gather(1, pick.expand(-1, -1, sin.shape[-1])))
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    # the query at position p sees the real tokens at positions <= p (the causal mask and the padding)
    allowed = (torch.arange(T, device=x.device)[None, None] <= order[..., None]) & attention_mask.bool()[:, None]
    out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], scale=attn.scaling,
                                                     enable_gqa=q.shape[1] != k.shape[1])
    out = attn.o_proj(out.transpose(1, 2).reshape(B, K, -1))
    h = hidden.gather(1, pick.expand(-1, -1, hidden.shape[-1])) + out
    h = h + last.mlp(last.post_attention_layernorm(h))
    return llm.lm_head(base.norm(h)), kept_targets


def answer_loss(llm: nn.Module, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean cross-entropy of the answer tokens, as ``llm(..., labels=labels).loss`` computes it."""
    logits, targets = answer_logits(llm, inputs_embeds, attention_mask, position_ids, labels)
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
