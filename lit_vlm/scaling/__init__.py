"""Scaling laws for inference-optimal VLMs: load results, fit a law, bootstrap it, validate it, and find
the compute-optimal (LLM size, visual tokens) frontier.

    from lit_vlm.scaling import load_results, fit_law, bootstrap, validate, frontier, optimal_v
    res = load_results("paper", "reasoning")
    fit = fit_law(res, "multiplicative")
    boot = bootstrap(res, fit, 1000, seed=0)
    boot.ci95("alpha_over_beta"), optimal_v(fit, q=50)
"""

from lit_vlm.scaling.bootstrap import Bootstrap, bootstrap, derived
from lit_vlm.scaling.fit import Fit, fit_law
from lit_vlm.scaling.frontier import Frontier, frontier, inference_flops, optimal_v, optimal_v_closed_form
from lit_vlm.scaling.identify import Profile, identify, profile_floor
from lit_vlm.scaling.laws import LAWS, Law, get_law
from lit_vlm.scaling.plots import plot_compare, plot_error_vs_v, plot_frontier
from lit_vlm.scaling.report import fit_report, summary_text
from lit_vlm.scaling.table import FAMILIES, Results, families_in, load_results, make_results
from lit_vlm.scaling.validate import HeldOut, Validation, compare_laws, validate

__all__ = [
    "Bootstrap", "FAMILIES", "Fit", "Frontier", "HeldOut", "LAWS", "Law", "Profile", "Results", "Validation",
    "bootstrap", "compare_laws", "derived", "families_in", "fit_law", "fit_report", "frontier", "get_law",
    "identify", "inference_flops", "load_results", "make_results", "optimal_v", "optimal_v_closed_form",
    "plot_compare", "plot_error_vs_v", "plot_frontier", "profile_floor", "summary_text", "validate",
]
