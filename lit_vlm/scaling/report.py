"""Everything `scaling fit` reports, as one JSON-ready dict, plus its short human-readable summary.

Headline = the identified quantities (alpha/beta, the optimal V, the frontier); the raw constants come with
their intervals and an `identified` verdict, because D in particular is poorly determined by this data.
"""

from __future__ import annotations

import numpy as np

from lit_vlm import __version__
from lit_vlm.errors import UserError
from lit_vlm.scaling.bootstrap import bootstrap, derived
from lit_vlm.scaling.fit import LOSS, LOSS_REASON, fit_law
from lit_vlm.scaling.frontier import frontier, inference_flops, reference_budget
from lit_vlm.scaling.identify import identify, profile_floor
from lit_vlm.scaling.laws import get_law
from lit_vlm.scaling.table import Results
from lit_vlm.scaling.validate import compare_laws, validate


FLOPS_UNITS = {
    "paper": "2 N (Q + V) with N in raw parameters",
    "full": "full inference: vision tower + compressor and projector + QueCC's question pass + 2 N (Q + V), "
            "the table's full_inference_flops (mean over seeds)",
}


def cell_costs(results: Results, cost="paper", text_tokens=50.0) -> np.ndarray:
    """Each cell's inference FLOPs under ``cost``: the paper's 2 N (Q + V) (Q = the table's mean when it
    records one, else ``text_tokens``), or the full ledger the grid measured."""
    if cost == "full":
        if results.costs is None:
            raise UserError("--cost full needs a table loaded with cost='full' (the full-cost columns)")
        return results.costs["full_inference_flops"]
    q = results.text_tokens if results.text_tokens is not None else float(text_tokens)
    return inference_flops(results.n * 1e9, results.v, q)


def cost_frontier(results: Results, cost="paper", text_tokens=50.0) -> dict:
    """The observed frontier: cells sorted by cost, each kept when its error beats every cheaper cell's."""
    flops = cell_costs(results, cost, text_tokens)
    cells, best = [], np.inf
    for i in np.argsort(flops, kind="stable"):
        if results.error[i] < best:
            best = results.error[i]
            cells.append({"llm": results.llm[i], "n_billion": float(results.n[i]), "v": float(results.v[i]),
                          "flops": float(flops[i]), "error": float(results.error[i])})
    parts = None
    if results.costs is not None:
        parts = {k: {f"{llm}/V{v:g}": float(c[i]) for i, (llm, v) in enumerate(zip(results.llm, results.v))}
                 for k, c in results.costs.items()}
    return {"cost": cost, "units": FLOPS_UNITS[cost], "cells": cells, "ledger": parts}


def fit_report(results: Results, law="multiplicative", *, n_bootstrap=1000, scheme="case", seed=0,
               text_tokens=50.0, extra: dict | None = None, cost="paper") -> dict:
    law = get_law(law)
    q_values = sorted({0.0, 50.0, float(text_tokens)})
    v_max = float(results.v.max())
    budget = reference_budget(results) if law.name == "additive" else None
    fit = fit_law(results, law)
    point = derived(fit, law, q_values, v_max, budget)
    boot = (bootstrap(results, fit, n_bootstrap, scheme=scheme, seed=seed, q_values=q_values, v_max=v_max,
                      budget=budget) if n_bootstrap else None)
    ci = (lambda k: boot.ci95(k)) if boot else (lambda k: None)
    profile = profile_floor(results, fit)
    ok, why = identify(fit, boot, point, profile)
    val = validate(results, law.name)
    v_star = {}
    for q in q_values:
        key = f"v_star_q{q:g}"
        v_star[f"{q:g}"] = {"value": point[key], "ci95": ci(key), "text_tokens": q,
                            "budget_flops": budget(q) if budget else None}
    report = {
        "law": law.name, "family": results.family, "params": fit.params,
        "ci95": {k: ci(k) for k in fit.params},
        "alpha_over_beta": point["alpha_over_beta"], "alpha_over_beta_ci95": ci("alpha_over_beta"),
        "v_star": v_star,
        "identified": ok, "identified_reason": why,
        "headline": _headline(point, v_star, ci, ok, results.family),
        "rmse": fit.rmse, "sse": fit.sse, "aic": fit.aic, "converged": fit.converged, "on_bound": fit.on_bound,
        "profile_D": profile.to_dict(),
        "validation": val.to_dict(), "law_comparison": compare_laws(results),
        "frontier": _frontier_table(fit, results, q_values),
        "cost": cost,
        "observed_frontier": cost_frontier(results, cost, text_tokens),
        "metadata": {
            "n_points": len(results), "n_missing_dropped": results.n_missing, "loss": LOSS, "loss_reason": LOSS_REASON,
            "bootstrap": boot.to_dict() if boot else None, "bootstrap_scheme": scheme if boot else None,
            "n_bootstrap": n_bootstrap, "seed": seed, "text_tokens": float(text_tokens),
            "units": {"N": "LLM parameters in billions, embeddings excluded (grid-runner counts divided by 1e9)",
                      "V": "visual tokens", "error": results.target,
                      "flops": "2 N (Q + V) with N in raw parameters (the fitted law's frontier)",
                      "observed_frontier_flops": FLOPS_UNITS[cost]},
            "v_range": [1.0, v_max], "fitter": "variable projection: exponent grid + NNLS, damped (Gauss-)Newton",
            "grad_norm": fit.grad_norm, "data": results.to_dict(), "lit_vlm_version": __version__, **(extra or {})},
    }
    return report


def _headline(point, v_star, ci, ok, family):
    ratio = point["alpha_over_beta"]
    return {"alpha_over_beta": [ratio, ci("alpha_over_beta")],
            "v_star": {q: [v["value"], v["ci95"]] for q, v in v_star.items()},
            "reading": (f"{family}: error falls faster with LLM size than with visual tokens (alpha/beta > 1)"
                        if ratio > 1 else f"{family}: visual tokens matter more than LLM size (alpha/beta < 1)"),
            "identified": sorted(k for k, v in ok.items() if v),
            "not_identified": sorted(k for k, v in ok.items() if not v)}


def _frontier_table(fit, results, q_values):
    """The optimal (N, V) at budgets spanning the grid, continuous and restricted to the grid's menu."""
    out = {}
    sizes, vs = np.unique(results.n) * 1e9, np.unique(results.v)
    for q in q_values:
        budgets = np.geomspace(inference_flops(sizes.min(), vs.min(), q), inference_flops(sizes.max(), vs.max(), q), 9)
        out[f"{q:g}"] = frontier(fit, budgets, q=q, v_max=float(vs.max()), menu_n=sizes, menu_v=vs).to_dict()
    return out


def summary_text(report: dict) -> str:
    md, p = report["metadata"], report["params"]
    boot = md["bootstrap"]
    how = f"{boot['n_resamples']} {boot['scheme']}-bootstrap resamples, seed {md['seed']}" if boot else "no bootstrap"
    ival = lambda c: f" [{c[0]:.3g}, {c[1]:.3g}]" if c else ""  # noqa: E731
    lines = [f"{report['family']}, {report['law']} law: {md['n_points']} cells "
             f"({md['n_missing_dropped']} missing dropped), {md['loss']} loss, {how}",
             "  params: " + "  ".join(f"{k}={v:.4g}{ival(report['ci95'][k])}" for k, v in p.items()),
             f"  rmse {report['rmse']:.4g}, converged {report['converged']}",
             f"  alpha/beta = {report['alpha_over_beta']:.3g}{ival(report['alpha_over_beta_ci95'])}",
             "  optimal V: " + "; ".join(f"Q={q}: {v['value']:.3g}{ival(v['ci95'])}"
                                         for q, v in report["v_star"].items())]
    bad = report["headline"]["not_identified"]
    if bad:
        lines.append("  not identified: " + "; ".join(f"{k} ({report['identified_reason'][k]})" for k in bad))
    big = report["validation"]["largest_size"]
    if big["skipped"] is None:
        b = big["baselines"]
        lines.append(f"  held out {big['held_out']}: MAE {big['mae']:.4f} ({100 * big['mean_rel']:.2f}% rel); "
                     f"log-linear {b['loglinear']['mae']:.4f}, per-V mean {b['group_mean']['mae']:.4f}")
    obs = report["observed_frontier"]
    lines.append(f"  observed frontier ({obs['cost']} cost): "
                 + ", ".join(f"{c['llm']} V={c['v']:g} ({c['flops']:.3g} FLOPs, error {c['error']:.3f})"
                             for c in obs["cells"]))
    cmp = report["law_comparison"]
    lines.append(f"  laws: AIC prefers {cmp['preferred_by_aic']}"
                 + (f", leave-one-size-out prefers {cmp['preferred_by_leave_one_size_out']}"
                    if "preferred_by_leave_one_size_out" in cmp else ""))
    return "\n".join(lines)
