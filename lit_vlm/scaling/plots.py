"""Figures: error vs inference FLOPs with the frontier (the paper's Figure 1), error vs V, and a
reasoning-vs-OCR side-by-side.

Built on matplotlib.figure.Figure, not pyplot: saving needs no display and no global backend switch (the
Agg canvas is used), and a notebook's own backend is left alone. Every `plot_*` takes an optional `ax`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from lit_vlm.scaling.fit import Fit
from lit_vlm.scaling.frontier import frontier, inference_flops
from lit_vlm.scaling.table import Results, size_label


def _axes(ax, size=(6, 4.5)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def plot_frontier(fit: Fit, results: Results, q=0.0, ax=None):
    """Observed cells and fitted curves per LLM size against inference FLOPs, plus the optimal frontier."""
    fig, ax = _axes(ax)
    sizes, v_max = np.unique(results.n), float(results.v.max())
    colors = [f"C{i}" for i in range(len(sizes))]
    v_line = np.geomspace(1.0, v_max, 200)
    for n, color in zip(sizes, colors):
        m = results.n == n
        ax.scatter(inference_flops(n * 1e9, results.v[m], q), results.error[m], color=color, s=18, zorder=3)
        ax.plot(inference_flops(n * 1e9, v_line, q), fit.predict(n, v_line), color=color, lw=1.2,
                label=size_label(n))
    lo = inference_flops(sizes.min() * 1e9, 1.0, q)
    hi = inference_flops(sizes.max() * 1e9, v_max, q)
    fr = frontier(fit, np.geomspace(lo, hi, 200), q=q, v_max=v_max)
    label = f"optimal (V*={fr.v_opt[0]:.3g})" if fit.law == "multiplicative" else "optimal frontier"
    inside = (fr.n_opt >= sizes.min() * 1e9 * 0.999) & (fr.n_opt <= sizes.max() * 1e9 * 1.001)
    # solid where the optimal N lies within the fitted sizes, dotted where it is an extrapolation
    ax.plot(fr.budgets, np.where(inside, fr.error_opt, np.nan), "k--", lw=1.8, label=label)
    ax.plot(fr.budgets, np.where(inside, np.nan, fr.error_opt), "k:", lw=1.2, label="(optimal N outside the grid)")
    ax.set_xscale("log")
    ax.set_xlabel(f"inference FLOPs = 2 N (Q + V), Q = {q:g}")
    ax.set_ylabel(f"error ({results.target})")
    ax.set_title(f"{results.family}: {fit.law} law")
    ax.legend(fontsize=8)
    return fig


def plot_error_vs_v(fit: Fit, results: Results, ax=None):
    """Error against visual tokens per LLM size, data and fitted law."""
    fig, ax = _axes(ax)
    v_line = np.geomspace(results.v.min(), results.v.max(), 200)
    for i, n in enumerate(np.unique(results.n)):
        m = results.n == n
        ax.scatter(results.v[m], results.error[m], color=f"C{i}", s=18, zorder=3)
        ax.plot(v_line, fit.predict(n, v_line), color=f"C{i}", lw=1.2, label=size_label(n))
    ax.set_xscale("log")
    ax.set_xlabel("visual tokens V")
    ax.set_ylabel(f"error ({results.target})")
    ax.set_title(f"{results.family}: {fit.law} law, rmse {fit.rmse:.4f}")
    ax.legend(fontsize=8)
    return fig


def plot_compare(pairs: dict, q=0.0):
    """Side by side frontier plots, one panel per family: pairs = {family: (fit, results)}."""
    fig = Figure(figsize=(6 * len(pairs), 4.5), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    for ax, (fit, results) in zip(axes, pairs.values()):
        plot_frontier(fit, results, q=q, ax=ax)
    return fig


def plot_cost(fit: Fit, results: Results, cost="full", text_tokens=50.0, ax=None):
    """Observed cells per LLM size against each cell's inference FLOPs under ``cost`` (the full ledger: tower,
    compressor, question pass and prefill), the law's prediction at those cells, and the observed frontier."""
    from lit_vlm.scaling.report import cell_costs, cost_frontier

    fig, ax = _axes(ax)
    flops = cell_costs(results, cost, text_tokens)
    for i, n in enumerate(np.unique(results.n)):
        m = np.flatnonzero(results.n == n)
        m = m[np.argsort(results.v[m])]
        ax.scatter(flops[m], results.error[m], color=f"C{i}", s=18, zorder=3)
        ax.plot(flops[m], fit.predict(n, results.v[m]), color=f"C{i}", lw=1.2, label=f"{size_label(n)} (law)")
    front = cost_frontier(results, cost, text_tokens)["cells"]
    ax.step([c["flops"] for c in front], [c["error"] for c in front], "k--", where="post", lw=1.5,
            label="observed frontier")
    ax.set_xscale("log")
    ax.set_xlabel(f"inference FLOPs ({cost} cost)")
    ax.set_ylabel(f"error ({results.target})")
    ax.set_title(f"{results.family}: each cell at its {cost} inference cost")
    ax.legend(fontsize=8)
    return fig
