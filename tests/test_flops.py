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


def _cost(compressor, visual_tokens, model_type="clip_vision_model"):
    from lit_vlm.flops import measure_cost

    torch.manual_seed(0)
    module = LitVLM(
        vision=dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                    model_type=model_type),
        llm=dict(hidden_size=64, num_layers=2, num_heads=4), compressor=compressor, visual_tokens=visual_tokens,
    )
    rows = [{**draw_example("test", i, image_size=32), "index": i} for i in range(4)]
    return measure_cost(module.vlm, module.processor.collate(rows), repeats=1)


@pytest.mark.parametrize("compressor,V", [("avgpool", 4), ("random", 4), ("downsample", 4), ("tokenpacker", 4),
                                          ("quecc", 4), ("perceiver", 3)])
def test_full_ledger_analytic_against_counted(compressor, V):
    c = _cost(compressor, V)
    # the compressors' formulas count every matmul: exact; the tower leaves out attention's scores and norms
    assert c.measured_compressor_flops == pytest.approx(c.compressor_flops, rel=1e-6)
    assert 0.9 < c.measured_vision_flops / c.vision_flops < 1.15, c
    assert c.full_flops == pytest.approx(c.vision_flops + c.compressor_flops + c.question_flops + c.analytic_flops)
    assert c.measured_full_flops == pytest.approx(c.measured_vision_flops + c.measured_compressor_flops
                                                  + c.measured_question_flops + c.measured_flops)
    assert c.full_latency_s > 0
    if compressor == "quecc":  # the extra LLM pass over the question: about 2 N Q_question
        assert 0.95 < c.measured_question_flops / c.question_flops < 1.2, c
    else:
        assert c.question_flops == c.measured_question_flops == 0


def test_downsample_cuts_the_tower_cost_and_nothing_else():
    pooled, small = _cost("avgpool", 4), _cost("downsample", 4)
    # 2 x 2 patches + CLS instead of 4 x 4 + CLS: about a quarter of the tower's matmuls
    assert small.measured_vision_flops < 0.35 * pooled.measured_vision_flops
    assert small.vision_flops < 0.35 * pooled.vision_flops
    assert small.measured_flops == pytest.approx(pooled.measured_flops)  # the same prefill: V and Q unchanged
