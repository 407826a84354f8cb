"""Assignment 3: fitting the scaling law and the optimal V, graded against lit_vlm.scaling.

The table: 5 LLM sizes x 7 V from error = 0.6 N^-0.2 V^-0.05 + 0.12 plus Gaussian noise (sd 0.002), one fixed
seed per case (two cases: a paper-like and a noisier one). The kit's fit_law on the same table is the reference.
Checks: predict() matches the formula; the submission's SSE is within 1% (+1e-9) of the kit's; predictions within
0.003 and alpha/beta within 10% of the kit's fit; optimal_v equals the closed form V* = beta Q / (alpha - beta)
(clipped) for given parameters, including the edge cases; V* and N* from the submission's own fit within 10%
of the kit's frontier at Q = 0, 50 and 200.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_submission

from lit_vlm.scaling import fit_law, frontier, make_results, optimal_v, optimal_v_closed_form

TRUE = {"A": 0.6, "alpha": 0.2, "beta": 0.05, "D": 0.12}
SIZES = [0.5, 1.0, 2.0, 4.0, 8.0]
VS = [1, 4, 16, 36, 64, 144, 576]


@pytest.fixture(scope="module")
def sub():
    return load_submission("a3_scaling_law")


def table(seed, sd):
    n, v = (a.ravel() for a in np.meshgrid(SIZES, VS, indexing="ij"))
    err = TRUE["A"] * n ** -TRUE["alpha"] * v ** -TRUE["beta"] + TRUE["D"]
    return n.astype(float), v.astype(float), err + np.random.default_rng(seed).normal(0, sd, err.shape)


CASES = {"paper-like": (0, 0.002), "noisy": (1, 0.006)}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, sub):
    n, v, err = table(*CASES[request.param])
    kit = fit_law(make_results(n, v, error=err), "multiplicative")
    mine = sub.fit_multiplicative(n, v, err)
    return n, v, err, kit, mine


def test_predict(sub):
    n, v = np.array([0.5, 7.0]), np.array([1.0, 576.0])
    expected = TRUE["A"] * n ** -TRUE["alpha"] * v ** -TRUE["beta"] + TRUE["D"]
    np.testing.assert_allclose(sub.predict(TRUE, n, v), expected, rtol=1e-12)


def test_fit_returns_the_four_parameters(case):
    mine = case[4]
    assert set(mine) == {"A", "alpha", "beta", "D"}
    assert all(np.isfinite(x) and x >= -1e-12 for x in mine.values())


def test_fit_is_as_good_as_the_kits(sub, case):
    n, v, err, kit, mine = case
    sse = float(np.sum((sub.predict(mine, n, v) - err) ** 2))
    assert sse <= kit.sse * 1.01 + 1e-9, f"SSE {sse:.3e} vs the kit's {kit.sse:.3e}"


def test_fit_agrees_with_the_kit_where_it_is_identified(sub, case):
    n, v, err, kit, mine = case
    np.testing.assert_allclose(sub.predict(mine, n, v), kit.predict(n, v), atol=0.003)
    ratio_mine, ratio_kit = mine["alpha"] / mine["beta"], kit.params["alpha"] / kit.params["beta"]
    assert ratio_mine == pytest.approx(ratio_kit, rel=0.10)


@pytest.mark.parametrize("params,q", [
    ({"A": 0.5, "alpha": 0.2, "beta": 0.05, "D": 0.1}, 0.0),
    ({"A": 0.5, "alpha": 0.2, "beta": 0.05, "D": 0.1}, 50.0),
    ({"A": 0.5, "alpha": 0.2, "beta": 0.05, "D": 0.1}, 10000.0),  # clipped at v_max
    ({"A": 0.5, "alpha": 0.1, "beta": 0.3, "D": 0.1}, 50.0),  # beta > alpha: all the tokens (OCR-like)
    ({"A": 0.5, "alpha": 0.13, "beta": 0.012, "D": 0.2}, 50.0),
])
def test_optimal_v_closed_form(sub, params, q):
    expected = optimal_v_closed_form(params["alpha"], params["beta"], q, 1.0, 576.0)
    assert sub.optimal_v(params, q) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("q", [0.0, 50.0, 200.0])
def test_optimal_v_and_n_from_the_fit(sub, case, q):
    n, v, err, kit, mine = case
    budget = 2 * 4e9 * (q + 16)
    v_kit = optimal_v(kit, q)
    front = frontier(kit, [budget], q=q)
    n_mine, v_mine = sub.optimal_allocation(mine, budget, q)
    assert sub.optimal_v(mine, q) == pytest.approx(v_kit, rel=0.10)
    assert v_mine == pytest.approx(front.v_opt[0], rel=0.10)
    assert n_mine == pytest.approx(front.n_opt[0], rel=0.10)
    assert 2 * n_mine * (q + v_mine) == pytest.approx(budget, rel=1e-9)
