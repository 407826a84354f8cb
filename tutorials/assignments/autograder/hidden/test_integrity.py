"""Hidden checks (instructors only: not in the student release): the work is the student's own.

1. What the graded file may take from the kit. It is parsed, not run: it may import from `lit_vlm` only the
   interface its assignment names (`Compressor`; `measure_prefill` in assignment 2, which the stub asks for;
   `UserError`), and may not reach other code by a back door (dynamic imports, sys.modules, exec/eval,
   __subclasses__, a string naming lit_vlm), nor, in assignment 2, read the counter's own ratio, analytic FLOPs
   or Q, or the VLM's own parameter count.
2. Cases the public checks do not show: other grids, dtypes, token counts, models and tables, with expected
   values computed here from the assignment's formulas, so a file tuned to the public cases fails.
"""

from __future__ import annotations

import ast
import math

import numpy as np
import pytest
import torch
from conftest import load_submission, submission_dir
from torch import nn

INTERFACE = {"lit_vlm": {"UserError"}, "lit_vlm.errors": {"UserError"}}
ALLOWED = {
    "a1_compressor": {**INTERFACE, "lit_vlm.model.compressors": {"Compressor"}},
    "a2_flops": {**INTERFACE, "lit_vlm.flops": {"measure_prefill"}},
    "a3_scaling_law": INTERFACE,
    "a4_ocr_compressor": {**INTERFACE, "lit_vlm.model.compressors": {"Compressor"}},
}
BACK_DOORS = {"importlib", "inspect", "pkgutil", "runpy", "builtins", "ctypes"}
FORBIDDEN_CALLS = {"__import__", "exec", "eval", "compile", "globals", "import_module"}
FORBIDDEN_ATTRS = {"modules", "__subclasses__", "__globals__", "__mro__", "__bases__"}
A2_FORBIDDEN_ATTRS = {"ratio", "analytic_flops", "text_tokens", "num_llm_params", "to_dict"}


def violations(name: str) -> list[str]:
    path = submission_dir() / f"{name}.py"
    if not path.is_file():
        pytest.fail(f"the submission has no {path.name} (looked in {path.parent})")
    allowed, found = ALLOWED[name], []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "lit_vlm" or top in BACK_DOORS:
                    found.append(f"{where}: `import {alias.name}`")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            top = module.split(".")[0]
            if node.level:
                found.append(f"{where}: a relative import")
            elif top in BACK_DOORS:
                found.append(f"{where}: `from {module} import ...`")
            elif top == "lit_vlm":
                extra = {a.name for a in node.names} - allowed.get(module, set())
                if extra:
                    found.append(f"{where}: `from {module} import {', '.join(sorted(extra))}` "
                                 f"(allowed: {sorted((m, sorted(n)) for m, n in allowed.items())})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
            found.append(f"{where}: calls {node.func.id}()")
        elif isinstance(node, ast.Attribute):
            if node.attr in FORBIDDEN_ATTRS or node.attr == "import_module":
                found.append(f"{where}: uses .{node.attr}")
            elif name == "a2_flops" and node.attr in A2_FORBIDDEN_ATTRS:
                found.append(f"{where}: reads .{node.attr} (compute it yourself)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "lit_vlm" in node.value:
            if "\n" not in node.value and len(node.value) <= 80:  # prose may mention the kit; a module name may not
                found.append(f"{where}: a string naming lit_vlm")
    return found


@pytest.mark.parametrize("name", list(ALLOWED))
def test_uses_only_the_interface_of_the_kit(name):
    found = violations(name)
    assert not found, "the graded file delegates to the kit:\n  " + "\n  ".join(found)


# --- hidden cases ---------------------------------------------------------------------------------------------
def _kw(V, grid, D, levels, **extra):
    return dict(in_dim=D, grid_side=grid, num_levels=levels, visual_tokens=V, query_dim=None, **extra)


@pytest.mark.parametrize("V,grid", [(9, 12), (36, 12), (4, 10)])
def test_a1_avgpool_other_grids_in_float64(V, grid):
    sub = load_submission("a1_compressor")
    levels, D = 3, 5
    x = torch.randn(2, levels, grid * grid, D, dtype=torch.float64, generator=torch.Generator().manual_seed(V))
    out = sub.AvgPoolCompressor(**_kw(V, grid, D, levels))(x)
    v, s = math.isqrt(V), grid // math.isqrt(V)
    main = x[:, -1].reshape(2, v, s, v, s, D)  # [B, row block, row in block, col block, col in block, D]
    expected = main.mean(dim=(2, 4)).reshape(2, V, D)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("V", [5, 7])
def test_a1_resampler_non_square_v_on_a_5x5_grid(V):
    sub = load_submission("a1_compressor")
    comp = sub.LearnedQueryResampler(**_kw(V, 5, 6, 1, out_dim=10))
    tokens, attn = comp(torch.randn(2, 1, 25, 6), return_attention=True)
    assert tokens.shape == (2, V, 10) and attn.shape == (2, V, 25)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, V))


class _TinyLM(nn.Module):
    """Not a Hugging Face model: only the two accessors the assignment's N needs."""

    def __init__(self, tied: bool):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.body = nn.Sequential(nn.Linear(6, 7), nn.LayerNorm(7), nn.Linear(7, 6, bias=False))
        self.head = nn.Linear(6, 11, bias=False)
        if tied:
            self.head.weight = self.embed.weight

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head


@pytest.mark.parametrize("tied", [True, False])
def test_a2_non_embedding_params_of_any_module(tied):
    sub = load_submission("a2_flops")
    assert sub.non_embedding_params(_TinyLM(tied)) == 6 * 7 + 7 + 7 + 7 + 7 * 6


def test_a2_text_tokens_and_flops_on_other_inputs():
    sub = load_submission("a2_flops")
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 1, 1]])
    assert sub.text_tokens({"prompt_mask": mask}) == pytest.approx((2 + 4 + 1) / 3)
    assert sub.inference_flops(3e9, 7.5, 0.5) == pytest.approx(2 * 3e9 * 8)


def test_a3_other_table_and_bounds():
    sub = load_submission("a3_scaling_law")
    true = {"A": 0.9, "alpha": 0.12, "beta": 0.03, "D": 0.05}
    n, v = (a.ravel().astype(float) for a in np.meshgrid([0.3, 0.9, 2.5, 6.0, 13.0], [2, 9, 25, 100, 400],
                                                          indexing="ij"))
    err = sub.predict(true, n, v) + np.random.default_rng(7).normal(0, 0.001, n.shape)
    fit = sub.fit_multiplicative(n, v, err)
    assert np.max(np.abs(sub.predict(fit, n, v) - sub.predict(true, n, v))) < 0.004
    assert fit["alpha"] / fit["beta"] == pytest.approx(4.0, rel=0.15)
    # the closed form with other bounds: V* = beta Q / (alpha - beta) = 30 for Q = 90, clipped to [v_min, v_max]
    p = {"A": 1.0, "alpha": 0.2, "beta": 0.05, "D": 0.0}
    assert sub.optimal_v(p, 90.0, v_min=2.0, v_max=1000.0) == pytest.approx(30.0)
    assert sub.optimal_v(p, 0.0, v_min=2.0, v_max=1000.0) == pytest.approx(2.0)
    assert sub.optimal_v(p, 90.0, v_min=2.0, v_max=16.0) == pytest.approx(16.0)
    n_opt, v_opt = sub.optimal_allocation(p, 1e12, 90.0, v_min=2.0, v_max=1000.0)
    assert v_opt == pytest.approx(30.0) and n_opt == pytest.approx(1e12 / (2 * 120.0))
