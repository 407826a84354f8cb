"""Assignment 2: the inference-FLOPs estimate 2 N (Q + V), checked against what torch actually counts.

Grading also checks that the work is your own: from the kit this file may import only `measure_prefill`
(and `UserError`), and computes N, Q, the analytic FLOPs and the ratio itself.

The paper charges one answer's prefill 2 N (Q + V) FLOPs: N LLM parameters, Q text tokens, V visual tokens
(docs/paper.md, "Cost model"). Every token passes once through every weight matrix, and a matrix-vector product
with a matrix of n entries costs 2 n FLOPs (a multiply and an add per entry).

Implement the five functions below. Only torch and lit_vlm.flops.measure_prefill are needed; a VLM here is the
kit's lit_vlm.model.vlm.VLM (vlm.llm is a Hugging Face causal LM, vlm.visual_tokens is V) and a batch follows
ARCHITECTURE.md (prompt_ids / prompt_mask: the left-padded prompts, each with exactly one <image> placeholder).

1. non_embedding_params(llm): N = all parameters of the LLM except the input embedding matrix and the output
   (lm_head) matrix when it is a separate tensor (a tied lm_head IS the embedding matrix: count nothing twice).
2. text_tokens(batch): Q = mean number of prompt tokens per example, minus the one image placeholder.
3. inference_flops(n_params, q, v): the paper's 2 N (Q + V).
4. counted_prefill_flops(llm, q, v): a finer model of what torch.utils.flop_counter counts for ONE example's
   prefill with eager attention, T = Q + V positions. The counter counts matrix products only, so
   - each weight MATRIX (parameter with dim >= 2, embeddings / lm_head excluded) costs 2 * entries per position
     (vectors - norm weights, biases - cost nothing it counts);
   - attention adds two T x T products per layer, Q K^T and A V, each 2 * T * T * d_attn FLOPs with
     d_attn = num_attention_heads * head_dim (the counter counts the full square, masked or not);
   - the prefill computes logits for the last position only: one lm_head row, 2 * hidden_size * vocab.
   Read the sizes from llm.config (num_hidden_layers, num_attention_heads, hidden_size, head_dim if present).
5. flops_ratio(vlm, batch): measured / analytic, measured = measure_prefill(vlm, batch).measured_flops (per
   example), analytic = your inference_flops(non_embedding_params(vlm.llm), text_tokens(batch), V).

Grading (autograder/test_a2_flops.py) on tiny VLMs: N exactly (tied and untied LLMs, llama and qwen2), Q
exactly, 2 N (Q + V) exactly, flops_ratio within 1e-6 of the kit's ratio and within [0.95, 1.30], and
counted_prefill_flops within 1% of the counter for V = 1, 4, 16, 64. Then think: at which V does the
paper's model drift most from the count, and why does that not change the paper's conclusions?
"""

from __future__ import annotations

from torch import nn

from lit_vlm.flops import measure_prefill  # noqa: F401  (you will need it in flops_ratio)


def non_embedding_params(llm: nn.Module) -> int:
    raise NotImplementedError("non_embedding_params")


def text_tokens(batch: dict) -> float:
    raise NotImplementedError("text_tokens")


def inference_flops(n_params: float, q: float, v: float) -> float:
    raise NotImplementedError("inference_flops")


def counted_prefill_flops(llm: nn.Module, q: float, v: float) -> float:
    raise NotImplementedError("counted_prefill_flops")


def flops_ratio(vlm, batch: dict) -> float:
    raise NotImplementedError("flops_ratio")
