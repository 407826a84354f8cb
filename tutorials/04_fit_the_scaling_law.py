# ---
# jupyter:
#   accelerator: GPU
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Fit the scaling law
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/lit-vlm/lit_vlm/blob/main/tutorials/04_fit_the_scaling_law.ipynb)
#
# The paper's law, as fitted in the authors' code (N in billions, V visual tokens, error = 1 − average score):
#
# $$\text{error}(N, V) = A \, N^{-\alpha} \, V^{-\beta} + D$$
#
# Under an inference budget C = 2 N (Q + V), substituting N = C / (2 (Q + V)) and minimising over V gives a
# closed form: **V\* = β Q / (α − β)** when α > β (clipped to [1, 576]) - independent of the budget. With a
# cached prompt (Q = 0) that is V\* = 1 token; with Q = 50 it moves up. This notebook refits the paper's own
# grid (shipped with the kit), checks those claims, puts uncertainty on them, validates the law on a held-out
# LLM size, redraws the paper's Figure 1 from our fit - and then fits our own grid from notebook 03.

# %%
# On Colab this installs the kit from GitHub; where lit_vlm is already importable it does nothing.
try:
    import lit_vlm
except ImportError:
    get_ipython().run_line_magic("pip", 'install -q "git+https://github.com/lit-vlm/lit_vlm"')
    import lit_vlm
print("lit_vlm", lit_vlm.__version__)

# %% [markdown]
# **Three modes**, set by `MODE` in the parameters cell below. `"committed"` (what this notebook shows on GitHub
# and when first opened in Colab) uses tiny sizes and shows the committed grid instead of training one; what has
# no committed counterpart runs as in smoke mode. `"smoke"` (the default outside Colab, or `LIT_VLM_SMOKE=1`)
# uses tiny sizes and a handful of training steps so the notebook runs top to bottom in about a minute on a
# laptop CPU: it shows the mechanics, and its trained numbers are close to chance. `"full"` (the default on
# Colab, or `LIT_VLM_SMOKE=0`) uses sizes meant for one Colab GPU. Full mode only raises the bootstrap to 2,000
# resamples: seconds anywhere.

# %% tags=["parameters"]
MODE = ""  # committed, smoke or full; empty: $LIT_VLM_MODE, else $LIT_VLM_SMOKE, else full on Colab
WORK_DIR = ""  # data, towers and grids go here (empty: $LIT_VLM_WORK_DIR, else a default folder for the mode)
N_BOOT = None  # bootstrap resamples (None: 100, or 2,000 in full mode)
GRID_RESULTS = ""  # a results.csv to fit in section 7 (empty: the committed grid; notebook 03 prints its own)

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

from lit_vlm import tutorial

kit = tutorial.setup(MODE, WORK_DIR)  # the mode, quiet logs, inline figures, the work folder, the device
SMOKE, WORK, ACCELERATOR = kit.smoke, kit.work, kit.accelerator

# %%
from lit_vlm.scaling import (bootstrap, fit_law, frontier, load_results, optimal_v, plot_error_vs_v,
                             plot_frontier, profile_floor, validate)
from lit_vlm import UserError

N_BOOT = kit.pick(N_BOOT, smoke=100, full=2000)

# %% [markdown]
# ## 1. The paper's grid
#
# 28 cells: Qwen-1.5 at 0.5B, 1.8B, 4B and 7B times V ∈ {1, 4, 16, 36, 64, 144, 576}; the reasoning score is
# the average over nine benchmarks (docs/paper.md).

# %%
res = load_results("paper", "reasoning")
grid = pd.DataFrame({"llm": res.llm, "N (B)": res.n, "V": res.v, "score": 1 - res.error})
display(grid.pivot(index="N (B)", columns="V", values="score").round(4))

# %% [markdown]
# ## 2. Fit, and compare with what the paper claims
#
# `fit_law` solves the least-squares problem properly (variable projection: A and D exactly by
# non-negative least squares for each exponent pair, the exponents by a multi-start and damped Newton) -
# the authors used a random search over a fixed box.

# %%
fit = fit_law(res, "multiplicative")
print({k: round(v, 5) for k, v in fit.params.items()}, f" rmse = {fit.rmse:.4f}", f" converged = {fit.converged}")
if fit.on_bound:
    print("on a bound:", fit.on_bound)
claims = pd.DataFrame([
    {"claim (paper)": "error falls faster with N than with V: alpha > beta",
     "ours": f"alpha = {fit.params['alpha']:.3f}, beta = {fit.params['beta']:.4f}",
     "holds": fit.params["alpha"] > fit.params["beta"]},
    {"claim (paper)": "Q = 0: the optimal V is 1 token", "ours": f"V* = {optimal_v(fit, 0):.3g}",
     "holds": optimal_v(fit, 0) == 1},
    {"claim (paper)": "Q = 50: the optimal V rises, still far below 576", "ours": f"V* = {optimal_v(fit, 50):.3g}",
     "holds": 1 < optimal_v(fit, 50) < 576},
])
display(claims)

# %% [markdown]
# ## 3. How sure are we? Bootstrap intervals
#
# Resample the 28 cells with replacement, refit, and read percentile 95% intervals. The quantities the
# conclusions rest on (α/β, V\*) are well determined; the floor D is not (docs/paper.md: the floor D is weakly
# identified by this grid). The profile likelihood of D tells the same story without resampling.

# %%
boot = bootstrap(res, fit, N_BOOT, seed=0)
rows = []
for name in ["alpha", "beta", "alpha_over_beta", "v_star_q0", "v_star_q50", "A", "D"]:
    point = fit.params.get(name, None)
    if point is None:
        point = {"alpha_over_beta": fit.params["alpha"] / fit.params["beta"], "v_star_q0": optimal_v(fit, 0),
                 "v_star_q50": optimal_v(fit, 50)}[name]
    lo, hi = boot.ci95(name)
    rows.append({"quantity": name, "estimate": point, "95% low": lo, "95% high": hi})
display(pd.DataFrame(rows).set_index("quantity").round(4))
prof = profile_floor(res, fit)
print(f"{N_BOOT} resamples ({boot.scheme} bootstrap). D's profile-likelihood 95% interval: "
      f"[{prof.ci95[0]:.3f}, {prof.ci95[1]:.3f}] (errors in the grid range from {res.error.min():.3f} up)")

# %% [markdown]
# ## 4. Does the law predict an LLM size it has not seen?
#
# The paper fits 0.5B-7B and predicts a held-out 14B within about 2% (the 14B cells are not in the shipped
# grid). Here: leave each size out in turn, refit on the rest, predict the held-out cells; the largest size
# is the test that matters (extrapolating up). Two baselines on the same folds: the mean of the other sizes
# at the same V, and a log-linear fit.

# %%
val = validate(res, "multiplicative")
display(pd.DataFrame([{"held out": f.held_out, "law MAE": f.mae, "law mean rel. error": f.mean_rel,
                       "baseline: same-V mean": f.baselines["group_mean"]["mae"],
                       "baseline: log-linear": f.baselines["loglinear"]["mae"]}
                      for f in val.leave_one_size_out]).set_index("held out").round(4))
big = val.largest_size
print(f"largest size ({big.held_out}) predicted within {100 * big.mean_rel:.2f}% (mean relative error)")

# %% [markdown]
# ## 5. The inference-optimal frontier at Q = 0 and Q = 50
#
# For each budget C, `frontier` returns the optimal (N, V): continuous, and restricted to the menu of sizes
# and V the grid actually has.

# %%
import numpy as np

sizes, vs = np.unique(res.n) * 1e9, np.unique(res.v)
tables = []
for q in (0.0, 50.0):
    budgets = np.geomspace(2 * sizes.min() * (q + 1), 2 * sizes.max() * (q + vs.max()), 6)
    fr = frontier(fit, budgets, q=q, v_max=float(vs.max()), menu_n=sizes, menu_v=vs)
    tables.append(pd.DataFrame({"Q": q, "budget (GFLOPs)": budgets / 1e9, "N* (B)": fr.n_opt / 1e9, "V*": fr.v_opt,
                                "menu N (B)": fr.menu_n_opt / 1e9, "menu V": fr.menu_v_opt,
                                "menu error": fr.menu_error}))
display(pd.concat(tables, ignore_index=True).round(3))

# %% [markdown]
# ## 6. The paper's Figure 1, redrawn from our fit
#
# Error against inference FLOPs, one curve per LLM size (dots: the paper's cells), and the optimal frontier
# (dashed). At Q = 0 the frontier runs along V = 1 of ever larger models; at Q = 50 every token is already
# expensive, so a few more visual tokens cost relatively little.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, q in zip(axes, (0.0, 50.0)):
    plot_frontier(fit, res, q=q, ax=ax)
plt.show()
fig, ax = plt.subplots(figsize=(6, 4.2))
plot_error_vs_v(fit, res, ax=ax)
plt.show()

# %% [markdown]
# ## 7. Our own grid
#
# The committed CPU grid (`results/cpu_law/results.csv`, shipped with the kit: 5 LLM widths from 8k to 295k
# parameters, V = 1, 4, 16, 64, 3 seeds; notebook 03 shows it), or the grid of your own that `GRID_RESULTS` names
# (notebook 03 prints the path of the one it trained). Each family gets the same treatment as the paper's grid
# above, in one call: `fit_report` fits the law, bootstraps it, says which quantities the data identify,
# holds out each LLM size in turn, and finds the frontier at Q = 0 and Q = 50 (`summary_text` prints it;
# `python -m lit_vlm scaling fit --results ... --family ...` writes the same report as fit.json). **A
# smoke-mode grid is far too short-trained to follow any law**: the fit below then only exercises the
# machinery, and the fitter's own checks (parameters on a bound, not identified) say so.

# %%
from lit_vlm.scaling import fit_report, summary_text

ours = tutorial.grid_results(GRID_RESULTS)
print("grid:", tutorial.shown(ours))
fits, rows = {}, []
for family in ("reasoning", "ocr"):
    try:
        r = load_results(ours, family)
        if np.ptp(r.error) == 0:  # e.g. every cell still at accuracy 0 after a smoke run
            print(f"{family}: every cell has the same score ({1 - r.error[0]:.3f}): there is no trend to fit")
            continue
        report = fit_report(r, "multiplicative", n_bootstrap=N_BOOT, seed=0)
    except UserError as err:  # e.g. too few cells, or a single size
        print(f"{family}: cannot fit - {err}")
        continue
    print(summary_text(report), end="\n\n")
    fits[family] = (fit_law(r, "multiplicative"), r)
    big = report["validation"]["largest_size"]
    rows.append({"family": family, "alpha / beta": report["alpha_over_beta"],
                 "95% interval": report["alpha_over_beta_ci95"],
                 "V* (Q=0)": report["v_star"]["0"]["value"], "V* (Q=50)": report["v_star"]["50"]["value"],
                 "V* (Q=50) 95%": report["v_star"]["50"]["ci95"],
                 "not identified": ", ".join(report["headline"]["not_identified"]) or "-",
                 "held-out largest: law MAE": big["mae"], "log-linear MAE": big["baselines"]["loglinear"]["mae"]
                 if big["skipped"] is None else None})
if rows:
    display(pd.DataFrame(rows).set_index("family").round(4))
for family, (f, r) in fits.items():
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, q in zip(axes, (0.0, 50.0)):
        plot_frontier(f, r, q=q, ax=ax)
        ax.set_title(f"{family}, Q = {q:g}")
    plt.show()

# %% [markdown]
# **What the committed grid says** (with 1,000 resamples, `python -m lit_vlm scaling fit --results
# results/cpu_law/results.csv --family reasoning --bootstrap 1000`; its output is kept in
# `results/cpu_law/fit_reasoning/`, and `results/cpu_law/README.md` has every command). OCR behaves as in the
# paper: α/β = 0.23 [0.11, 0.29], far below 1, and the law describes it to 2.5 points. Reasoning follows the
# paper's law: α = 0.39 [0.36, 0.54] and β = 0.15 [0.12, 0.19] are both identified, α/β = 2.71 [2.32, 3.39]
# lies above 2, V\* = 1 at Q = 0, and at Q = 50 the optimum moves inside the grid, to V\* = 29 [21, 38] visual
# tokens - the paper's finding 1 on a grid you can train on a laptop. The law fitted without the largest LLM
# predicts it within 0.77 points (a log-linear fit: 1.80). Where the law fits least well, notebook 03's figure
# shows: the largest LLM gains nothing from V = 1 to 4 and loses at V = 16. Split by name over all three seeds
# (`results/cpu_law/tasks.md`), that loss has two parts: names the image shows, readable at V = 4 and 16 in only
# some of their images and stored less well, and the rarest names it never shows, which more visual positions
# cost the LLM's recall (README, "Toward a CPU grid").

# %% [markdown]
# ### What to take away
#
# * On the paper's own numbers the law fits to a few tenths of a point, α ≫ β for reasoning, V\* = 1 at
#   Q = 0, and V\* rises to about a dozen tokens at Q = 50 - the paper's finding 1, now with intervals.
# * What is identified is the *shape* (α/β, V\*, the frontier), not every constant. D sits on its lower bound
#   0; its bootstrap interval collapses onto that bound, which is not certainty: the profile likelihood
#   shows a whole range of floors fitting about as well.
# * On our own grid the same machinery separates what is known from what is not: α and β are both identified
#   for reasoning, α < β for OCR, the held-out prediction holds, and the frontier at Q = 50 sits inside the
#   grid; the ratio α/β's interval clears 2 (2.32), but not by much: with 3 seeds of 20 cells, another run of
#   the same design (the committed grid before, `results/cpu_law/round24/`) gave [2.07, 3.24], and a design one
#   step away (40 % of the names shown instead of 37.5 %) [1.98, 3.24]. Always read the intervals and the
#   identification flags before the point estimates.
# * Assignment 3 asks you to write the fit and V\* yourself and grades them against `lit_vlm.scaling`.
