"""Assignment 3, reference solution: fit error = A N^-alpha V^-beta + D and find the inference-optimal V.

Fitting by variable projection: for fixed exponents the law is linear in (A, D), so those come from a
non-negative least-squares solve; a coarse grid over (alpha, beta) finds the basin and a bounded
least-squares polish (scipy) finishes the job.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import least_squares, nnls


def predict(params: dict, n_billion, v):
    """A N^-alpha V^-beta + D, N in billions."""
    n, v = np.asarray(n_billion, float), np.asarray(v, float)
    return params["A"] * n ** -params["alpha"] * v ** -params["beta"] + params["D"]


def _linear_part(alpha, beta, n, v, y):
    phi = np.column_stack([n ** -alpha * v ** -beta, np.ones_like(n)])
    (a, d), rnorm = nnls(phi, y)
    return a, d, rnorm**2


def fit_multiplicative(n_billion, v, error) -> dict:
    """Least-squares fit of the multiplicative law; returns {"A", "alpha", "beta", "D"} (all >= 0)."""
    n, v, y = (np.asarray(x, float) for x in (n_billion, v, error))
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 2.0, 30)])
    best = min(((_linear_part(a, b, n, v, y)[2], a, b) for a in grid for b in grid))
    _, a0, b0 = best

    def residuals(x):
        a, d, _ = _linear_part(x[0], x[1], n, v, y)
        return a * n ** -x[0] * v ** -x[1] + d - y

    sol = least_squares(residuals, [a0, b0], bounds=([0, 0], [2, 2]), xtol=1e-12, ftol=1e-12, gtol=1e-12)
    alpha, beta = sol.x
    a, d, _ = _linear_part(alpha, beta, n, v, y)
    return {"A": float(a), "alpha": float(alpha), "beta": float(beta), "D": float(d)}


def optimal_v(params: dict, q: float, v_min: float = 1.0, v_max: float = 576.0) -> float:
    """V minimising the predicted error at a fixed budget C = 2 N (Q + V).

    On the budget line N = C / (2 (Q + V)), so log(error - D) = const + alpha log(Q + V) - beta log V, whose
    derivative in V, alpha / (Q + V) - beta / V, vanishes at V* = beta Q / (alpha - beta) (a minimum when
    alpha > beta). It does not depend on C. Clip to [v_min, v_max]; alpha <= beta means "more V is always
    better": v_max.
    """
    alpha, beta = params["alpha"], params["beta"]
    if params["A"] == 0 or (alpha == beta and q == 0):
        return float(v_min)
    if alpha <= beta:
        return float(v_max)
    return float(np.clip(beta * q / (alpha - beta), v_min, v_max))


def optimal_allocation(params: dict, budget_flops: float, q: float, v_min: float = 1.0, v_max: float = 576.0):
    """(N in raw parameters, V) that spend `budget_flops` = 2 N (Q + V) with the lowest predicted error."""
    v = optimal_v(params, q, v_min, v_max)
    return budget_flops / (2.0 * (q + v)), v
