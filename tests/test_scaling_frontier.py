"""The inference-optimal frontier: closed form vs numeric optimisation, and everything vs brute force."""

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from lit_vlm.errors import UserError
from lit_vlm.scaling import Fit, frontier, get_law, inference_flops, optimal_v, optimal_v_closed_form

MULT = {"A": 0.6, "alpha": 0.07, "beta": 0.015, "D": 0.05}
ADD = {"A": 0.4, "alpha": 0.1, "B": 0.19, "beta": 0.05, "D": 0.02}


def make_fit(law, params):
    return Fit(law, "test", params, 0.0, 0.0, 28, True, 0.0, {})


def brute_force(law, params, budget, q, v_max=576.0):
    """Every (N, V) on a fine log grid that fits the budget; the one with the lowest predicted error."""
    n = np.geomspace(1e5, 1e15, 5000)[:, None]  # raw parameters; log step 0.0046
    v = np.geomspace(1.0, v_max, 1000)[None, :]  # log step 0.0064
    err = get_law(law).predict(params, n / 1e9, v)
    err = np.where(inference_flops(n, v, q) <= budget, err, np.inf)
    i, j = np.unravel_index(err.argmin(), err.shape)
    return err[i, j], n[i, 0], v[0, j]


@pytest.mark.parametrize("alpha,beta", [(0.07, 0.015), (0.3, 0.1), (0.1, 0.09), (0.03, 0.04), (0.2, 0.0)])
@pytest.mark.parametrize("q", [0.0, 10.0, 50.0, 300.0])
def test_closed_form_v_star_matches_numeric_optimisation(alpha, beta, q):
    # minimise log(error - D) along the budget line, N = C / (2 (Q + V)); A, D and C drop out
    objective = lambda logv: alpha * np.log(q + np.exp(logv)) - beta * logv  # noqa: E731
    num = np.exp(minimize_scalar(objective, bounds=(0.0, np.log(576.0)), method="bounded",
                                 options={"xatol": 1e-10}).x)
    closed = optimal_v_closed_form(alpha, beta, q, 1.0, 576.0)
    assert closed == pytest.approx(num, rel=1e-4, abs=1e-4)
    assert objective(np.log(closed)) <= objective(np.log(num)) + 1e-12


def test_closed_form_special_cases():
    assert optimal_v_closed_form(0.07, 0.015, 0.0) == 1.0  # Q = 0: the fewest tokens (the paper's finding)
    assert optimal_v_closed_form(0.03, 0.04, 50.0) == 576.0  # beta > alpha: as many tokens as allowed
    assert optimal_v_closed_form(0.2, 0.1, 50.0) == pytest.approx(50.0)  # beta Q / (alpha - beta)


@pytest.mark.parametrize("law,params", [("multiplicative", MULT), ("additive", ADD),
                                        ("multiplicative", {"A": 0.9, "alpha": 0.026, "beta": 0.039, "D": 0.0})])
@pytest.mark.parametrize("q", [0.0, 50.0])
def test_continuous_frontier_matches_brute_force(law, params, q):
    fit = make_fit(law, params)
    budgets = np.array([1e10, 1e12, 1e14])
    fr = frontier(fit, budgets, q=q)
    assert np.all(inference_flops(fr.n_opt, fr.v_opt, q) <= budgets * (1 + 1e-9))
    for c, err, v in zip(budgets, fr.error_opt, fr.v_opt):
        b_err, _, b_v = brute_force(law, params, c, q)
        assert err <= b_err + 1e-12  # the exact optimum is at least as good as any grid point
        assert b_err - err < 3e-4 * err  # and the fine grid gets close to it (one grid step costs < that)
        assert abs(np.log(b_v) - np.log(v)) < 0.1 or b_err - err < 1e-6  # near the same V (or a flat optimum)


def test_menu_frontier_matches_exhaustive_enumeration():
    fit = make_fit("multiplicative", MULT)
    sizes, vs = np.array([0.5, 1.8, 4, 7]) * 1e9, np.array([1, 4, 16, 36, 64, 144, 576])
    budgets = np.geomspace(1e9, 1e13, 25)
    fr = frontier(fit, budgets, q=50.0, menu_n=sizes, menu_v=vs)
    for c, n, v, err in zip(budgets, fr.menu_n_opt, fr.menu_v_opt, fr.menu_error):
        feasible = [(fit.predict(a / 1e9, b), a, b) for a, b in itertools.product(sizes, vs)
                    if inference_flops(a, b, 50.0) <= c]
        if not feasible:
            assert np.isnan(n) and np.isnan(err)
            continue
        best = min(feasible)
        assert err == pytest.approx(best[0]) and (n, v) == (best[1], best[2])
        assert err >= fr.error_opt[list(budgets).index(c)] - 1e-12  # a menu can't beat the continuum


def test_frontier_is_derived_from_the_fit():
    a = frontier(make_fit("multiplicative", {**MULT, "beta": 0.03}), [1e12], q=50.0)
    b = frontier(make_fit("multiplicative", {**MULT, "beta": 0.05}), [1e12], q=50.0)
    assert a.v_opt[0] < b.v_opt[0]  # more weight on V -> more tokens


def test_additive_v_star_needs_a_budget_and_bad_inputs_are_refused():
    fit = make_fit("additive", ADD)
    with pytest.raises(UserError, match="budget"):
        optimal_v(fit, 50.0)
    assert 1.0 <= optimal_v(fit, 50.0, budget=1e12) <= 576.0
    with pytest.raises(UserError, match="Q=-1"):
        optimal_v(make_fit("multiplicative", MULT), -1.0)
    with pytest.raises(UserError, match="positive"):
        frontier(fit, [0.0])
