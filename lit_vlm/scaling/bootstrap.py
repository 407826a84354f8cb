"""Seedable bootstrap: percentile 95% intervals for every parameter and derived quantity.

Two resampling schemes, chosen with `scheme`:
- "case": resample the cells (N, V, error) with replacement. Treats cells as exchangeable.
- "llm": resample whole LLM sizes with replacement (all of a size's cells move together). Honest about
  sizes being the scarce, correlated unit (a size's cells share one trained LLM), but with 4 sizes the
  resampled data sets take few distinct values, so intervals are coarse.
Each refit is warm-started from the full-data exponents (no grid), which keeps 1000 refits to ~a second.
Resamples that leave a single size or V (the law cannot be fitted) are redrawn and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lit_vlm.errors import UserError
from lit_vlm.scaling.fit import Fit, fit_law
from lit_vlm.scaling.frontier import optimal_v, reference_budget
from lit_vlm.scaling.laws import get_law
from lit_vlm.scaling.table import Results

SCHEMES = ("case", "llm")
MIN_RESAMPLES = 50  # a percentile 95% interval from fewer resamples is mostly noise


@dataclass
class Bootstrap:
    scheme: str
    n_resamples: int
    seed: int
    samples: dict  # name -> array [n_resamples]
    n_redrawn: int = 0
    n_unconverged: int = 0
    notes: list[str] = field(default_factory=list)

    def ci95(self, name) -> list[float]:
        x = np.asarray(self.samples[name], dtype=float)
        # inf (alpha/beta when a resample fits beta = 0) cannot be interpolated: take the nearest sample then
        method = "linear" if np.isfinite(x).all() else "nearest"
        lo, hi = np.percentile(x, [2.5, 97.5], method=method)
        return [float(lo), float(hi)]

    def to_dict(self) -> dict:
        return {"scheme": self.scheme, "n_resamples": self.n_resamples, "seed": self.seed,
                "n_redrawn": self.n_redrawn, "n_unconverged": self.n_unconverged, "interval": "percentile 95%",
                "ci95": {k: self.ci95(k) for k in self.samples}, "notes": self.notes}


def derived(fit_or_params, law, q_values=(0.0, 50.0), v_max=576.0, budget=None) -> dict:
    """The quantities the paper's conclusions rest on: alpha/beta and the optimal V per Q."""
    params = fit_or_params.params if isinstance(fit_or_params, Fit) else fit_or_params
    law = get_law(law)
    beta = params["beta"]
    out = {"alpha_over_beta": params["alpha"] / beta if beta > 0 else float("inf")}
    for q in q_values:
        c = None if budget is None else budget(q)
        out[f"v_star_q{q:g}"] = optimal_v((law.name, params), q, budget=c, v_max=v_max)
    return out


def bootstrap(results: Results, fit: Fit, n=1000, *, scheme="case", seed=0, q_values=(0.0, 50.0),
              v_max=None, budget=None) -> Bootstrap:
    """Refit `fit.law` on `n` resamples of `results`.

    `budget(q)` gives the FLOPs at which the additive law's V* is evaluated (default: `reference_budget`).
    """
    if scheme not in SCHEMES:
        raise UserError(f"unknown bootstrap scheme {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if int(n) != n or n < MIN_RESAMPLES:
        raise UserError(f"bootstrap resamples {n!r} is too few; allowed: an integer >= {MIN_RESAMPLES}")
    law = get_law(fit.law)
    v_max = float(results.v.max()) if v_max is None else v_max
    if law.name == "additive" and budget is None:
        budget = reference_budget(results)
    rng = np.random.default_rng(seed)
    sizes = np.unique(results.n)
    by_size = [np.flatnonzero(results.n == s) for s in sizes]
    start = (fit.params["alpha"], fit.params["beta"])
    rows, redrawn, unconverged = [], 0, 0
    while len(rows) < n:
        if scheme == "case":
            idx = rng.integers(0, len(results), len(results))
        else:
            idx = np.concatenate([by_size[i] for i in rng.integers(0, len(sizes), len(sizes))])
        sample = results.subset(idx)
        k = len(law.params)
        if len(np.unique(sample.n)) < 2 or len(np.unique(sample.v)) < 2 or len(sample) <= k:
            redrawn += 1
            if redrawn > 10 * n:
                raise UserError("bootstrap keeps drawing unfittable resamples; the data are too small")
            continue
        f = fit_law(sample, law, start=start)
        unconverged += not f.converged
        rows.append({**f.params, **derived(f, law, q_values, v_max, budget)})
    samples = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    boot = Bootstrap(scheme, int(n), seed, samples, redrawn, unconverged)
    if redrawn:
        boot.notes.append(f"{redrawn} resamples with a single LLM size or V were redrawn")
    return boot
