"""quecc and tokenpacker against a re-statement of their reference code, with the same weights.

References: locuslab/llava-token-compression, llava/model/multimodal_projector/quecc.py (QueCC), and
CircleRadon/TokenPacker, llava/model/multimodal_projector/builder.py (TokenPacker without its final MLP, which is
the kit's VLM projector). The functions below are written here from their description, in plain torch, with the
references' parameter names; they share no code with lit_vlm.model.compressors. What they say:

- multi = the feature levels concatenated on channels [B, P, L*D]; single = the main (last listed) level [B, P, D].
- every query/key/value branch is Linear - GELU - Linear - LayerNorm(eps 1e-6); keys and values have their own.
- QueCC queries: single + LayerNorm(Linear(question)) -> branch -> depthwise conv, kernel = stride = s.
- TokenPacker queries: single bilinearly resized to the v x v output grid -> Linear without bias -> LayerNorm.
- each query attends (nn.MultiheadAttention math: in-projections, heads, softmax, out-projection) to the s x s
  patches of its own region; the token is the attention output alone (no residual).
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lit_vlm.model.compressors import build_compressor

B, SIDE, D, LEVELS, DQ, HEADS = 2, 8, 32, 4, 24, 8


def _ln(x, w, p):
    return F.layer_norm(x, x.shape[-1:], w[f"{p}.weight"], w[f"{p}.bias"], eps=1e-6)


def _lin(x, w, p):
    return F.linear(x, w[f"{p}.weight"], w.get(f"{p}.bias"))


def _branch(x, w, p):
    """p.0 Linear, p.1 GELU, p.2 Linear, p.3 LayerNorm (QueCC's q_proj / k_proj / v_proj)."""
    return _ln(_lin(F.gelu(_lin(x, w, f"{p}.0")), w, f"{p}.2"), w, f"{p}.3")


def _regions(x, side, s):
    """[B, side*side, d] row-major -> [B*v*v, s*s, d]: region (i, j) holds rows i*s.., columns j*s.."""
    b, _, d = x.shape
    v = side // s
    return x.view(b, v, s, v, s, d).permute(0, 1, 3, 2, 4, 5).reshape(b * v * v, s * s, d)


def _mha(q, k, v, w, p, heads):
    """nn.MultiheadAttention's math for q [N, 1, d], k/v [N, n, d]."""
    wq, wk, wv = w[f"{p}.in_proj_weight"].chunk(3)
    bq, bk, bv = w[f"{p}.in_proj_bias"].chunk(3)
    n, _, d = q.shape
    hd = d // heads

    def split(t):
        return t.view(n, -1, heads, hd).transpose(1, 2)

    q, k, v = split(F.linear(q, wq, bq)), split(F.linear(k, wk, bk)), split(F.linear(v, wv, bv))
    att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), -1)
    out = (att @ v).transpose(1, 2).reshape(n, -1, d)
    return F.linear(out, w[f"{p}.out_proj.weight"], w[f"{p}.out_proj.bias"])


def quecc_reference(w, features, text, s):
    multi, single = torch.cat(features.unbind(1), -1), features[:, -1]
    b, _, d = single.shape
    v = SIDE // s
    x = single + _ln(_lin(text, w, "text_projection.0"), w, "text_projection.1")[:, None]
    q = _branch(x, w, "q_proj").transpose(1, 2).reshape(b, d, SIDE, SIDE)
    q = F.conv2d(q, w["q_downsample.weight"], w["q_downsample.bias"], stride=s, groups=d)  # [b, d, v, v]
    q = q.flatten(2).transpose(1, 2).reshape(b * v * v, 1, d)
    k = _regions(_branch(multi, w, "k_proj"), SIDE, s)
    val = _regions(_branch(multi, w, "v_proj"), SIDE, s)
    return _mha(q, k, val, w, "clip_attn", HEADS).view(b, v * v, d)


def tokenpacker_reference(w, features, s):
    multi, single = torch.cat(features.unbind(1), -1), features[:, -1]
    b, _, d = single.shape
    v = SIDE // s
    grid = single.transpose(1, 2).reshape(b, d, SIDE, SIDE)
    points = F.interpolate(grid, size=(v, v), mode="bilinear").flatten(2).transpose(1, 2)  # [b, v*v, d]
    q = _ln(F.linear(points, w["q_proj_1.weight"]), w, "ln_q_1").reshape(b * v * v, 1, d)
    k = _ln(_lin(F.gelu(_lin(multi, w, "k_proj_1.0")), w, "k_proj_1.2"), w, "ln_k_1")
    val = _ln(_lin(F.gelu(_lin(multi, w, "v_proj_1.0")), w, "v_proj_1.2"), w, "ln_v_1")
    return _mha(q, _regions(k, SIDE, s), _regions(val, SIDE, s), w, "clip_attn", HEADS).view(b, v * v, d)


def _mha_shapes(p, d):
    return {f"{p}.in_proj_weight": (3 * d, d), f"{p}.in_proj_bias": (3 * d,),
            f"{p}.out_proj.weight": (d, d), f"{p}.out_proj.bias": (d,)}


def _branch_shapes(p, d_in, d):
    return {f"{p}.0.weight": (d, d_in), f"{p}.0.bias": (d,), f"{p}.2.weight": (d, d), f"{p}.2.bias": (d,),
            f"{p}.3.weight": (d,), f"{p}.3.bias": (d,)}


def reference_shapes(name, d, levels, dq, s):
    """Every parameter of the reference module, by its reference name."""
    if name == "quecc":
        return {"text_projection.0.weight": (d, dq), "text_projection.0.bias": (d,),
                "text_projection.1.weight": (d,), "text_projection.1.bias": (d,),
                **_branch_shapes("q_proj", d, d), **_branch_shapes("k_proj", levels * d, d),
                **_branch_shapes("v_proj", levels * d, d),
                "q_downsample.weight": (d, 1, s, s), "q_downsample.bias": (d,), **_mha_shapes("clip_attn", d)}
    shapes = {"q_proj_1.weight": (d, d), **_mha_shapes("clip_attn", d)}
    for kv in ("k", "v"):
        shapes.update({f"{kv}_proj_1.0.weight": (d, levels * d), f"{kv}_proj_1.0.bias": (d,),
                       f"{kv}_proj_1.2.weight": (d, d), f"{kv}_proj_1.2.bias": (d,)})
    for n in ("q", "k", "v"):
        shapes.update({f"ln_{n}_1.weight": (d,), f"ln_{n}_1.bias": (d,)})
    return shapes


# kit parameter name -> reference parameter name (prefix rewrites, first match wins)
RENAME = {
    "quecc": [("text_proj.", "text_projection."), ("q_branch.", "q_proj."), ("down.", "q_downsample."),
              ("attn.k_branch.", "k_proj."), ("attn.v_branch.", "v_proj."), ("attn.attn.", "clip_attn.")],
    "tokenpacker": [("q_in.0.", "q_proj_1."), ("q_in.1.", "ln_q_1."), ("attn.k_branch.3.", "ln_k_1."),
                    ("attn.v_branch.3.", "ln_v_1."), ("attn.k_branch.", "k_proj_1."),
                    ("attn.v_branch.", "v_proj_1."), ("attn.attn.", "clip_attn.")],
}


def reference_weights(name, comp):
    """The kit's parameters under the reference names, each shifted by noise so that no LayerNorm is the
    identity and no bias is zero (the comparison then sees every parameter)."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for kit_name, p in comp.named_parameters():
        with torch.no_grad():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
        ref = next(r + kit_name[len(k):] for k, r in RENAME[name] if kit_name.startswith(k))
        out[ref] = p.detach()
    return out


@pytest.mark.parametrize("name", ["quecc", "tokenpacker"])
@pytest.mark.parametrize("s", [1, 2, 4, 8])
def test_matches_the_reference(name, s):
    torch.manual_seed(0)
    comp = build_compressor(name, in_dim=D, grid_side=SIDE, num_levels=LEVELS, visual_tokens=(SIDE // s) ** 2,
                            query_dim=DQ, num_heads=HEADS)
    w = reference_weights(name, comp)
    assert {k: tuple(v.shape) for k, v in w.items()} == reference_shapes(name, D, LEVELS, DQ, s)
    g = torch.Generator().manual_seed(1)
    features, text = torch.randn(B, LEVELS, SIDE * SIDE, D, generator=g), torch.randn(B, DQ, generator=g)
    with torch.no_grad():
        out = comp(features, text)
        ref = quecc_reference(w, features, text, s) if name == "quecc" else tokenpacker_reference(w, features, s)
    assert out.shape == ref.shape == (B, (SIDE // s) ** 2, D)
    assert ref.abs().mean() > 0.1  # a real signal, not a comparison of two near-zero tensors
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_parameter_counts_at_clip_l_sizes():
    """CLIP-L/14-336: D = 1024, levels [12, 16, 22, -2], 24 x 24 grid, LLM width 4096 (the question's); s = 4
    (V = 36) for QueCC's conv. The references: QueCC 21.01M, TokenPacker without its MLP 15.74M."""
    counts = {}
    for name in ("quecc", "tokenpacker"):
        comp = build_compressor(name, in_dim=1024, grid_side=24, num_levels=4, visual_tokens=36, query_dim=4096)
        counts[name] = sum(p.numel() for p in comp.parameters())
        ref = sum(math.prod(shape) for shape in reference_shapes(name, 1024, 4, 4096, 4).values())
        assert counts[name] == ref
    assert counts == {"quecc": 21_008_384, "tokenpacker": 15_742_976}


def test_initialisation_follows_the_references():
    torch.manual_seed(0)
    tp = build_compressor("tokenpacker", in_dim=256, grid_side=8, num_levels=2, visual_tokens=16)
    for m in tp.modules():  # every Linear: (truncated) normal, std 0.02 (nn.Linear's default would be 0.036)
        if isinstance(m, torch.nn.Linear):
            assert abs(m.weight.std().item() - 0.02) < 0.002
            assert m.bias is None or not m.bias.any()
    assert tp.q_in[0].bias is None  # the point queries' projection has no bias
    qc = build_compressor("quecc", in_dim=256, grid_side=8, num_levels=2, visual_tokens=16, query_dim=64)
    attn = qc.attn.attn  # xavier-uniform in-projection [3d, d], zero biases
    bound = math.sqrt(6 / (256 + 3 * 256))
    assert attn.in_proj_weight.abs().max() <= bound and attn.in_proj_weight.abs().max() > 0.9 * bound
    assert not attn.in_proj_bias.any() and not attn.out_proj.bias.any()
    norms = [m for c in (tp, qc) for m in c.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 3 + 4 and all(m.eps == 1e-6 for m in norms)
