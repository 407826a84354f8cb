"""Assignment 2: the inference-FLOPs estimate, graded against the kit and against torch's FLOP counter.

Checks: N (non-embedding parameters) exactly for tied and untied llama and for qwen2; Q exactly on a batch with
prompts of different lengths; 2 N (Q + V) exactly; flops_ratio within 1e-6 of lit_vlm.flops.measure_prefill's
ratio and inside [0.95, 1.30]; the finer counted_prefill_flops within 1% of the counter at V = 1, 4, 16, 64.
All VLMs use eager attention: torch 2.13's counter does not count the CPU SDPA kernel (it reports 0 FLOPs for
it), which would hide the attention term this assignment is about.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_submission

from lit_vlm.data.synthetic import draw_example
from lit_vlm.flops import measure_prefill
from lit_vlm.module import LitVLM

VISION = dict(image_size=64, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
LLMS = {
    "llama-tied": dict(model_type="llama", hidden_size=64, num_layers=2, num_heads=4, attn_implementation="eager"),
    "llama-untied": dict(model_type="llama", hidden_size=64, num_layers=2, num_heads=4, tie_word_embeddings=False,
                         attn_implementation="eager"),
    "qwen2-gqa": dict(model_type="qwen2", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      attn_implementation="eager"),
}


@pytest.fixture(scope="module")
def sub():
    return load_submission("a2_flops")


def build(llm="llama-tied", V=16):
    torch.manual_seed(0)
    return LitVLM(vision=VISION, llm=LLMS[llm], compressor="avgpool" if V < 64 else "identity", visual_tokens=V)


@pytest.fixture(scope="module")
def rows():
    return [draw_example("test", i) for i in range(6)]


@pytest.mark.parametrize("llm", list(LLMS))
def test_non_embedding_params(sub, llm):
    module = build(llm)
    assert sub.non_embedding_params(module.vlm.llm) == module.vlm.num_llm_params(with_embeddings=False)


def test_text_tokens(sub, rows):
    module = build()
    batch = module.processor.collate(rows)
    lengths = batch["prompt_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1, "the test batch should mix prompt lengths"
    assert sub.text_tokens(batch) == pytest.approx(float((lengths - 1).float().mean()), abs=1e-9)


@pytest.mark.parametrize("n,q,v", [(1e9, 0, 1), (7e9, 50, 576), (131392, 11.5, 16), (3, 2, 0)])
def test_inference_flops(sub, n, q, v):
    assert sub.inference_flops(n, q, v) == pytest.approx(2 * n * (q + v), rel=1e-12)


@pytest.mark.parametrize("V", [1, 4, 16, 64])
def test_ratio_against_the_counter(sub, rows, V):
    module = build(V=V)
    batch = module.processor.collate(rows[:1])
    kit = measure_prefill(module.vlm, batch, repeats=1).ratio
    mine = sub.flops_ratio(module.vlm, batch)
    assert mine == pytest.approx(kit, rel=1e-6)
    assert 0.95 <= mine <= 1.30


@pytest.mark.parametrize("llm", list(LLMS))
@pytest.mark.parametrize("V", [1, 4, 16, 64])
def test_counted_prefill_flops_within_one_percent(sub, rows, llm, V):
    module = build(llm, V)
    batch = module.processor.collate(rows[:1])  # one example: no padding positions in the count
    cost = measure_prefill(module.vlm, batch, repeats=1)
    mine = sub.counted_prefill_flops(module.vlm.llm, cost.text_tokens, V)
    assert mine / cost.measured_flops == pytest.approx(1.0, abs=0.01), (mine, cost.measured_flops)
