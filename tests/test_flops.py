"""The analytic cost 2 N (Q + V) against torch's FLOP counter on a real prefill."""

import pytest
import torch

from lit_vlm.data.synthetic import draw_example
from lit_vlm.errors import UserError
from lit_vlm.flops import inference_flops, measure_prefill
from lit_vlm.module import LitVLM


def test_inference_flops_formula_and_bad_input():
    assert inference_flops(1e9, 50, 1) == 2 * 1e9 * 51
    with pytest.raises(UserError, match="N > 0"):
        inference_flops(0, 10, 1)


@pytest.mark.parametrize("visual_tokens", [1, 16])
def test_measured_prefill_is_close_to_analytic(visual_tokens):
    torch.manual_seed(0)
    module = LitVLM(
        vision=dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
        llm=dict(hidden_size=64, num_layers=2, num_heads=4),
        visual_tokens=visual_tokens,
    )
    rows = [{**draw_example("test", i, image_size=32), "index": i} for i in range(6)]
    cost = measure_prefill(module.vlm, module.processor.collate(rows))
    # Attention scores and values, plus the one lm_head row, come on top of 2 N (Q + V): a few percent here.
    assert 1.0 < cost.ratio < 1.5, cost
    assert cost.latency_s > 0
    # Attention is counted (eager), so more tokens cost super-linearly more than the analytic model says.
    assert module.vlm.llm.config._attn_implementation == "sdpa"  # restored after counting
