"""Compressors: shapes for every V, the V rule, attention maps, locality, and clear errors."""

import pytest
import torch

from lit_vlm.errors import UserError
from lit_vlm.model.compressors import COMPRESSORS, build_compressor, valid_visual_tokens

B, SIDE, D, DQ = 2, 8, 32, 16


def make(name, V, levels=1, **options):
    torch.manual_seed(0)
    return build_compressor(name, in_dim=D, grid_side=SIDE, num_levels=levels, visual_tokens=V, query_dim=DQ, **options)


def feats(levels=1, seed=1):
    return torch.randn(B, levels, SIDE * SIDE, D, generator=torch.Generator().manual_seed(seed))


# downsample is fed the small grid its resized image gives (tests/test_baselines.py)
GRID_CASES = [(n, v) for n in COMPRESSORS if n not in ("identity", "downsample") for v in (1, 4, 16, 64)]
CASES = [("identity", 64), *GRID_CASES, ("perceiver", 7), ("perceiver", 100)]


@pytest.mark.parametrize("name,V", CASES)
def test_shape(name, V):
    levels = (1, 3) if COMPRESSORS[name].multi_level else (1,)
    for n in levels:
        out = make(name, V, n)(feats(n), torch.randn(B, DQ))
        assert out.shape == (B, V, D)


@pytest.mark.parametrize("name", ["pixelshuffle", "perceiver", "tokenpacker", "quecc"])
def test_out_dim_option(name):
    out = make(name, 4, 2, out_dim=24)(feats(2), torch.randn(B, DQ))
    assert out.shape == (B, 4, 24)


def test_valid_visual_tokens():
    assert valid_visual_tokens("avgpool", 8) == [1, 4, 16, 64]
    assert valid_visual_tokens("tokenpacker", 24) == [1, 4, 9, 16, 36, 64, 144, 576]  # the paper's V are among them
    assert valid_visual_tokens("identity", 8) == [64]
    assert valid_visual_tokens("perceiver", 2) == [1, 2, 3, 4]


def test_invalid_visual_tokens_lists_the_valid_ones():
    msg = r"visual_tokens=9 does not fit a 8x8 patch grid for 'avgpool'; valid: 1, 4, 16, 64$"
    with pytest.raises(UserError, match=msg):
        make("avgpool", 9)
    with pytest.raises(UserError, match="valid: 64"):
        make("identity", 16)
    with pytest.raises(UserError, match="any positive integer"):
        make("perceiver", 0)
    with pytest.raises(UserError, match="valid: 1, 4, 16, 64"):
        make("quecc", 2)


def test_unknown_name_and_option():
    with pytest.raises(UserError, match="allowed: identity, avgpool, pixelshuffle, perceiver, tokenpacker, quecc, "
                                        "random, downsample"):
        make("mystery", 4)
    with pytest.raises(UserError, match="'depth' is not understood by 'avgpool'"):
        make("avgpool", 4, depth=2)
    with pytest.raises(UserError, match="num_heads=5"):
        make("tokenpacker", 4, num_heads=5)


def test_quecc_needs_a_query():
    with pytest.raises(ValueError, match="query"):
        make("quecc", 4)(feats())


@pytest.mark.parametrize("name", ["tokenpacker", "quecc"])
@pytest.mark.parametrize("V", [1, 4, 16])
def test_region_attention_is_local_and_normalised(name, V):
    c = make(name, V, 2, num_heads=4)
    _, attn = c(feats(2), torch.randn(B, DQ), return_attention=True)
    assert attn.shape == (B, V, SIDE * SIDE)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, V))
    # token v puts all its weight on its own s x s region of the grid
    s, v = SIDE // int(V**0.5), int(V**0.5)
    grid = attn.view(B, v, v, v, s, v, s)  # [B, tok_row, tok_col, reg_row, s, reg_col, s]
    for i in range(v):
        for j in range(v):
            torch.testing.assert_close(grid[:, i, j, i, :, j, :].sum((-1, -2)), torch.ones(B))


@pytest.mark.parametrize("name", ["tokenpacker", "quecc", "avgpool", "pixelshuffle"])
@pytest.mark.parametrize("V", [4, 16])
def test_tokens_depend_only_on_their_region(name, V):
    levels = 3 if COMPRESSORS[name].multi_level else 1
    c, f, q = make(name, V, levels), feats(levels), torch.randn(B, DQ)
    s = SIDE // int(V**0.5)
    for level in range(levels):  # perturb region 0 (top-left s x s) of one level only
        g = f.clone().view(B, levels, SIDE, SIDE, D)
        g[:, level, :s, :s] += 1.0
        a, b = c(f, q), c(g.view_as(f), q)
        if level == levels - 1 or COMPRESSORS[name].multi_level:
            assert not torch.allclose(a[:, 0], b[:, 0])
        torch.testing.assert_close(a[:, 1:], b[:, 1:])


@pytest.mark.parametrize("name", ["tokenpacker", "quecc"])
def test_gradient_of_a_token_stays_in_its_region(name):
    c, q = make(name, 16, 2), torch.randn(B, DQ)
    f = feats(2).requires_grad_(True)
    c(f, q)[:, 5].sum().backward()  # token 5 of a 4 x 4 output grid: row 1, column 1, patches 2..3 x 2..3
    grad = f.grad.abs().sum((0, 1, 3)).view(SIDE, SIDE)
    inside = torch.zeros(SIDE, SIDE, dtype=torch.bool)
    inside[2:4, 2:4] = True
    assert (grad[inside] > 0).all() and not grad[~inside].any()


@pytest.mark.parametrize("V", [1, 4, 16])
def test_quecc_follows_the_question_when_regions_have_several_patches(V):
    c, f = make("quecc", V, 2), feats(2)
    q1, q2 = torch.randn(B, DQ), torch.randn(B, DQ)
    assert (c(f, q1) - c(f, q2)).abs().max() > 1e-3


def test_quecc_ignores_the_question_at_one_patch_per_token():
    # s = 1: each query has one key, so the softmax is 1 whatever the query (as in the reference)
    c, f = make("quecc", SIDE * SIDE, 2), feats(2)
    torch.testing.assert_close(c(f, torch.randn(B, DQ)), c(f, 10 * torch.randn(B, DQ)))


def test_perceiver_attention_sums_to_one_over_all_patches():
    _, attn = make("perceiver", 5, depth=2)(feats(), return_attention=True)
    assert attn.shape == (B, 5, SIDE * SIDE)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, 5))


def test_parameter_free_and_identity():
    f = feats(2)
    assert make("identity", 64, 2)(f, return_attention=True)[1] is None
    torch.testing.assert_close(make("identity", 64, 2)(f), f[:, -1])  # the main level is the last one
    pooled = make("avgpool", 1, 2)(f)
    torch.testing.assert_close(pooled[:, 0], f[:, -1].mean(1))
    assert sum(p.numel() for p in make("avgpool", 4).parameters()) == 0


def test_pixelshuffle_stacks_regions():
    c = make("pixelshuffle", 16)  # s = 2: each token sees 4 patches * D channels
    assert c.proj.in_features == 4 * D
