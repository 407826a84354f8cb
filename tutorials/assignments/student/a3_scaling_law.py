"""Assignment 3: fit the paper's scaling law to a results table and find the inference-optimal number of tokens.

Grading also checks that the work is your own: this file may import nothing from the kit (`UserError` at
most); numpy and scipy are yours to use.

The law (docs/paper.md, as fitted in the authors' code), N in billions of LLM parameters, V visual tokens:

    error(N, V) = A * N^(-alpha) * V^(-beta) + D,        A, alpha, beta, D >= 0

The grader gives you a table generated from a known law plus noise (like a real grid: a few LLM sizes times a
few V), and compares your answers with the kit's own fitter (lit_vlm.scaling.fit_law) - you may read it for
ideas, but do not call lit_vlm.scaling here: numpy and scipy are allowed.

Implement:
1. predict(params, n_billion, v): the law, vectorised over arrays.
2. fit_multiplicative(n_billion, v, error) -> {"A", "alpha", "beta", "D"}: least squares (sum of squared
   errors). Careful: the problem is not convex and scipy's curve_fit from a bad start stops in a bad basin.
   Hint: for fixed (alpha, beta) the law is LINEAR in (A, D).
3. optimal_v(params, q, v_min=1, v_max=576): under a fixed inference budget C = 2 N (Q + V) FLOPs (N in raw
   parameters, Q text tokens), the V with the lowest predicted error, clipped to [v_min, v_max]. Derive it:
   put N = C / (2 (Q + V)) into the law and minimise over V. Does it depend on C? What is it at Q = 0?
4. optimal_allocation(params, budget_flops, q, v_min=1, v_max=576) -> (N in raw parameters, V): the optimal
   point that spends the whole budget.

Grading (autograder/test_a3_scaling_law.py): your SSE at most 1% above the kit's fit; your predictions within
0.003 of the kit's fit on the grid and your alpha / beta within 10% of the kit's; optimal_v equal (to 1e-6
relative) to the closed form for given parameters; V* and the optimal N from your fit within 10% of the kit's.
D, on its own, is NOT graded: it is weakly identified by such a grid (docs/paper.md) - find out why.
"""

from __future__ import annotations

import numpy as np  # noqa: F401


def predict(params: dict, n_billion, v):
    raise NotImplementedError("predict")


def fit_multiplicative(n_billion, v, error) -> dict:
    raise NotImplementedError("fit_multiplicative")


def optimal_v(params: dict, q: float, v_min: float = 1.0, v_max: float = 576.0) -> float:
    raise NotImplementedError("optimal_v")


def optimal_allocation(params: dict, budget_flops: float, q: float, v_min: float = 1.0, v_max: float = 576.0):
    raise NotImplementedError("optimal_allocation")
