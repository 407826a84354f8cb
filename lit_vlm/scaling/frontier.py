"""The inference-optimal frontier: for a FLOP budget C, the (N, V) with the lowest predicted error.

Cost model (the paper's): inference FLOPs = 2 * N * (Q + V), N in raw LLM parameters, Q text tokens.
Error falls in both N and V, so the budget is always spent: N = C / (2 (Q + V)), leaving a 1-D problem in V.

Closed form for the multiplicative law. On the constraint,
    error - D = A (2 (Q + V) / C)^alpha V^-beta,   so   d/dV log(error - D) = alpha / (Q + V) - beta / V,
which is zero where beta (Q + V) = alpha V, i.e.
    V* = beta Q / (alpha - beta)   when alpha > beta  (a minimum: the derivative goes from - to +),
clipped to [v_min, v_max]. With Q = 0 the derivative is (alpha - beta) / V > 0, so V* = v_min = 1 token:
the paper's finding. When alpha <= beta the derivative is negative everywhere and V* = v_max.
V* does not depend on C or A: only the ratio alpha / beta and Q matter. The additive law has no such
closed form (V* moves with C), so it is minimised numerically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lit_vlm.errors import UserError
from lit_vlm.scaling.laws import get_law


def inference_flops(n_params, v, q=0.0):
    """2 N (Q + V), N in raw parameters."""
    return 2.0 * np.asarray(n_params, dtype=float) * (q + np.asarray(v, dtype=float))


def reference_budget(results):
    """budget(q): FLOPs at the grid's geometric-mean N and V. Where the additive law's V* is quoted (it
    moves with the budget; the multiplicative law's does not)."""
    n_mid = float(np.exp(np.log(results.n).mean())) * 1e9
    v_mid = float(np.exp(np.log(results.v).mean()))
    return lambda q: float(inference_flops(n_mid, v_mid, q))


def optimal_v_closed_form(alpha, beta, q, v_min=1.0, v_max=576.0) -> float:
    """V* of the multiplicative law (see the module docstring for the derivation)."""
    if alpha > beta:
        return float(np.clip(beta * q / (alpha - beta), v_min, v_max))
    if alpha == beta and (q == 0 or beta == 0):
        return float(v_min)  # flat in V: any V is optimal; report the cheapest
    return float(v_max)


def optimal_v(fit, q=0.0, *, budget=None, v_min=1.0, v_max=576.0) -> float:
    """The compute-optimal number of visual tokens for a fit (budget needed for the additive law only)."""
    _check_q(q)
    law, params = _law_params(fit)
    if law.name == "multiplicative":
        if params["A"] == 0.0:
            return float(v_min)  # the error depends on neither N nor V: take the cheapest V
        return optimal_v_closed_form(params["alpha"], params["beta"], q, v_min, v_max)
    if budget is None:
        raise UserError("the additive law's optimal V depends on the budget: pass budget= (FLOPs)")
    return float(_numeric_v(law, params, np.atleast_1d(float(budget)), q, v_min, v_max)[0])


@dataclass
class Frontier:
    """Optimal (N, V) per budget, continuous and, when a menu is given, restricted to it."""

    budgets: np.ndarray  # FLOPs
    q: float
    n_opt: np.ndarray  # raw parameters
    v_opt: np.ndarray
    error_opt: np.ndarray
    menu_n_opt: np.ndarray | None = None
    menu_v_opt: np.ndarray | None = None
    menu_error: np.ndarray | None = None

    def to_dict(self) -> dict:
        out = {"budgets_flops": self.budgets.tolist(), "text_tokens": self.q, "n_params": self.n_opt.tolist(),
               "visual_tokens": self.v_opt.tolist(), "error": self.error_opt.tolist()}
        if self.menu_n_opt is not None:
            out["menu"] = {"n_params": _nan_to_none(self.menu_n_opt), "visual_tokens": _nan_to_none(self.menu_v_opt),
                           "error": _nan_to_none(self.menu_error)}
        return out


def frontier(fit, budgets, *, q=0.0, v_min=1.0, v_max=576.0, menu_n=None, menu_v=None) -> Frontier:
    """Minimise predicted error subject to 2 N (Q + V) <= C for each budget C (FLOPs).

    Continuous: N > 0 and V in [v_min, v_max]. Menu: N from `menu_n` (raw parameters) and V from `menu_v`;
    a budget that no menu pair fits gets NaN.
    """
    _check_q(q)
    law, params = _law_params(fit)
    c = np.atleast_1d(np.asarray(budgets, dtype=float))
    if np.any(~(c > 0)):
        raise UserError("budgets must be positive FLOP counts")
    if law.name == "multiplicative":
        v = np.full(c.shape, optimal_v(fit, q, v_min=v_min, v_max=v_max))
    else:
        v = _numeric_v(law, params, c, q, v_min, v_max)
    n = c / (2.0 * (q + v))
    out = Frontier(c, float(q), n, v, law.predict(params, n / 1e9, v))
    if menu_n is not None and menu_v is not None:
        mn, mv = np.meshgrid(np.asarray(menu_n, float), np.asarray(menu_v, float), indexing="ij")
        mn, mv = mn.ravel(), mv.ravel()
        err = law.predict(params, mn / 1e9, mv)
        ok = inference_flops(mn, mv, q)[None, :] <= c[:, None] * (1 + 1e-12)
        masked = np.where(ok, err[None, :], np.inf)
        best = masked.argmin(axis=1)
        found = np.isfinite(masked[np.arange(len(c)), best])
        out.menu_n_opt = np.where(found, mn[best], np.nan)
        out.menu_v_opt = np.where(found, mv[best], np.nan)
        out.menu_error = np.where(found, err[best], np.nan)
    return out


def _numeric_v(law, params, budgets, q, v_min, v_max):
    """argmin over V of the error on the budget line, for many budgets at once.

    A dense grid in log V finds the right basin; golden-section search inside the neighbouring grid cells
    then pins it down to ~1e-10 in log V (the error along the line is smooth and locally unimodal).
    """
    if v_max <= v_min:
        return np.full(budgets.shape, float(v_min))
    grid = np.linspace(np.log(v_min), np.log(v_max), 1025)

    def err(logv, c):
        v = np.exp(logv)
        return law.predict(params, c / (2e9 * (q + v)), v)

    e = err(grid[None, :], budgets[:, None])
    i = e.argmin(axis=1)
    lo, hi = grid[np.maximum(i - 1, 0)], grid[np.minimum(i + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        x1, x2 = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        left = err(x1, budgets) <= err(x2, budgets)
        hi, lo = np.where(left, x2, hi), np.where(left, lo, x1)
    return np.exp((lo + hi) / 2)


def _law_params(fit):
    if isinstance(fit, tuple):  # (law, params) for callers without a Fit object
        return get_law(fit[0]), fit[1]
    return get_law(fit.law), fit.params


def _check_q(q):
    if not (np.isfinite(q) and q >= 0):
        raise UserError(f"text tokens Q={q} is not allowed; allowed: a number >= 0")


def _nan_to_none(a):
    return [None if not np.isfinite(x) else float(x) for x in a]
