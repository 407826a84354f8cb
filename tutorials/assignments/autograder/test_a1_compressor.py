"""Assignment 1: AvgPoolCompressor and LearnedQueryResampler, graded on the kit's Compressor contract.

What each test checks: shapes for every valid V; V validation (ValueError for a V that does not fit); gradient
flow (every parameter and the input features receive a non-zero gradient); equivalence on fixed inputs (avgpool
against the kit's own avgpool, the resampler against the formula in the assignment, computed here from the
submission's own state dict); and integration (registered in the kit's registry, it trains inside LitVLM).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import load_submission

from lit_vlm.model.compressors import COMPRESSORS, Compressor

GRID, D, LEVELS = 8, 12, 2


@pytest.fixture(scope="module")
def sub():
    return load_submission("a1_compressor")


def make(cls, V, out_dim=None, grid=GRID):
    kw = dict(in_dim=D, grid_side=grid, num_levels=LEVELS, visual_tokens=V, query_dim=None)
    if out_dim is not None:
        kw["out_dim"] = out_dim
    return cls(**kw)


def features(batch=3, grid=GRID, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, LEVELS, grid * grid, D, generator=g)


# --- Part A: avgpool ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("V", [1, 4, 16, 64])
def test_avgpool_shapes(sub, V):
    comp = make(sub.AvgPoolCompressor, V)
    assert isinstance(comp, Compressor)
    assert comp(features()).shape == (3, V, D)
    assert sum(p.numel() for p in comp.parameters()) == 0


@pytest.mark.parametrize("V", [0, 2, 3, 8, 9, 36, 100])
def test_avgpool_rejects_v_that_does_not_fit(sub, V):
    with pytest.raises(ValueError):
        make(sub.AvgPoolCompressor, V)


@pytest.mark.parametrize("V,grid", [(1, 8), (4, 8), (16, 8), (64, 8), (9, 6), (4, 6), (36, 6)])
def test_avgpool_equals_the_kit(sub, V, grid):
    x = features(grid=grid, seed=V)
    mine = make(sub.AvgPoolCompressor, V, grid=grid)(x)
    ref = make(COMPRESSORS["avgpool"], V, grid=grid)(x)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-6)


def test_avgpool_region_order_by_hand(sub):
    # a 4x4 grid whose main-level feature is the patch index: the 2x2 regions average to known values
    x = torch.arange(16.0).view(1, 1, 16, 1).expand(1, LEVELS, 16, D).contiguous()
    out = make(sub.AvgPoolCompressor, 4, grid=4)(x)[0, :, 0]
    torch.testing.assert_close(out, torch.tensor([2.5, 4.5, 10.5, 12.5]))


def test_avgpool_gradient(sub):
    x = features().requires_grad_(True)
    make(sub.AvgPoolCompressor, 4)(x).sum().backward()
    # every main-level patch contributes 1 / (s*s) = 1/16 to one token; other levels get nothing
    torch.testing.assert_close(x.grad[:, -1], torch.full_like(x.grad[:, -1], 1 / 16))
    assert x.grad[:, 0].abs().sum() == 0


# --- Part B: learned-query resampler ---------------------------------------------------------------------------
PARAMS = {"queries": lambda V, E: (V, E), "pos": lambda V, E: (GRID * GRID, D), "k_proj.weight": lambda V, E: (E, D),
          "k_proj.bias": lambda V, E: (E,), "v_proj.weight": lambda V, E: (E, D), "v_proj.bias": lambda V, E: (E,),
          "out_proj.weight": lambda V, E: (E, E), "out_proj.bias": lambda V, E: (E,)}


def reference(state, x):
    """The assignment's formula, from a state dict."""
    h = x[:, -1] + state["pos"]
    k = h @ state["k_proj.weight"].T + state["k_proj.bias"]
    v = h @ state["v_proj.weight"].T + state["v_proj.bias"]
    q = state["queries"]
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
    return (attn @ v) @ state["out_proj.weight"].T + state["out_proj.bias"], attn


@pytest.mark.parametrize("V", [1, 3, 4, 10, 64])
def test_resampler_shapes_and_parameters(sub, V):
    comp = make(sub.LearnedQueryResampler, V, out_dim=16)
    shapes = {k: tuple(v.shape) for k, v in comp.state_dict().items()}
    assert shapes == {k: f(V, 16) for k, f in PARAMS.items()}
    tokens, attn = comp(features(), return_attention=True)
    assert tokens.shape == (3, V, 16) and attn.shape == (3, V, GRID * GRID)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, V))
    assert comp(features()).shape == (3, V, 16)  # without return_attention: the tokens only


@pytest.mark.parametrize("V", [0, -1])
def test_resampler_rejects_nonpositive_v(sub, V):
    with pytest.raises(ValueError):
        make(sub.LearnedQueryResampler, V, out_dim=16)


def test_resampler_accepts_any_positive_v(sub):
    assert sub.LearnedQueryResampler.accepts(7, GRID)
    assert not sub.LearnedQueryResampler.accepts(0, GRID)


@pytest.mark.parametrize("V", [1, 5, 16])
def test_resampler_equals_the_formula(sub, V):
    comp = make(sub.LearnedQueryResampler, V, out_dim=16)
    g = torch.Generator().manual_seed(V)
    state = {k: torch.randn(v.shape, generator=g) * 0.3 for k, v in comp.state_dict().items()}
    comp.load_state_dict(state)
    x = features(seed=V + 1)
    tokens, attn = comp(x, return_attention=True)
    ref_tokens, ref_attn = reference(state, x)
    torch.testing.assert_close(attn, ref_attn, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-5, atol=1e-5)


def test_resampler_gradients_reach_everything(sub):
    comp = make(sub.LearnedQueryResampler, 4, out_dim=16)
    with torch.no_grad():  # nudge the zero-initialised positional embedding off its symmetric start
        comp.pos.normal_(0, 0.1)
    x = features().requires_grad_(True)
    comp(x).pow(2).sum().backward()
    for name, p in comp.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    assert x.grad[:, -1].abs().sum() > 0


# --- integration -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,V", [("AvgPoolCompressor", 4), ("LearnedQueryResampler", 2)])
def test_trains_inside_the_vlm(sub, monkeypatch, name, V):
    from lit_vlm.data.synthetic import draw_example
    from lit_vlm.module import LitVLM

    monkeypatch.setitem(COMPRESSORS, "student", getattr(sub, name))
    vision = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)
    torch.manual_seed(0)
    module = LitVLM(vision=vision, llm=dict(hidden_size=32, num_layers=1, num_heads=2), compressor="student",
                    visual_tokens=V)
    batch = module.processor.collate([draw_example("train", i, image_size=32) for i in range(4)])
    loss = module.vlm(batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in module.vlm.projector.parameters())
