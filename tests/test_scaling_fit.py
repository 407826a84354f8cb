"""The fitter: recovers known laws, matches an independent optimiser, honest bootstrap intervals."""

import numpy as np
import pytest
from scipy.optimize import minimize, nnls

from lit_vlm.scaling import bootstrap, derived, fit_law, get_law, identify, load_results, make_results, profile_floor
from lit_vlm.errors import UserError
from lit_vlm.scaling.fit import nnls_batch, profiled

SIZES, VS = [0.1, 0.3, 1, 3, 10, 30], [1, 4, 16, 64, 144, 576]
PAPER_SIZES, PAPER_VS = [0.5, 1.8, 4, 7], [1, 4, 16, 36, 64, 144, 576]
TRUTH = {"multiplicative": {"A": 0.6, "alpha": 0.3, "beta": 0.12, "D": 0.15},
         "additive": {"A": 0.3, "alpha": 0.35, "B": 0.25, "beta": 0.2, "D": 0.1}}


def synthetic(law, params, seed, sigma, sizes=SIZES, vs=VS):
    n, v = (a.ravel() for a in np.meshgrid(sizes, vs, indexing="ij"))
    noise = np.random.default_rng(seed).normal(0, sigma, n.size)
    return make_results(n, v, error=get_law(law).predict(params, n, v) + noise)


@pytest.mark.parametrize("law", ["multiplicative", "additive"])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_recovers_known_parameters_from_noisy_data(law, seed):
    truth = TRUTH[law]
    fit = fit_law(synthetic(law, truth, seed, sigma=0.002), law)
    assert fit.converged and not fit.on_bound
    for name, value in truth.items():
        assert fit.params[name] == pytest.approx(value, rel=0.12), name
    assert fit.rmse == pytest.approx(0.002, rel=0.5)  # residuals at the noise level, not below or above


@pytest.mark.parametrize("law", ["multiplicative", "additive"])
def test_noiseless_data_is_fitted_exactly(law):
    fit = fit_law(synthetic(law, TRUTH[law], 0, sigma=0.0), law)
    assert fit.sse < 1e-12
    for name, value in TRUTH[law].items():
        assert fit.params[name] == pytest.approx(value, abs=1e-5)


def _reference_sse(res, law):
    """An independent optimiser: dense 61x61 exponent grid, then L-BFGS-B from the 8 best grid points."""
    law = get_law(law)
    logn, logv, y = np.log(res.n), np.log(res.v), res.error
    grid = np.concatenate([[0.0], np.geomspace(1e-4, 2.0, 60)])
    best = np.inf
    for a in grid[::2]:  # coarse pass for speed: 31 x 61 points through scipy's own NNLS
        for b in grid:
            best = min(best, nnls(law.columns(a, b, logn, logv), y)[1] ** 2)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    _, sse = nnls_batch(law.columns(a, b, logn, logv), y)
    for i in np.argsort(sse.ravel())[:8]:
        res_ = minimize(lambda x: profiled(law, logn, logv, y, x)[:2], [a.flat[i], b.flat[i]], jac=True,
                        method="L-BFGS-B", bounds=[(0, 2)] * 2, options={"ftol": 1e-15, "gtol": 1e-14})
        best = min(best, profiled(law, logn, logv, y, res_.x)[0])
    return best


@pytest.mark.parametrize("law", ["multiplicative", "additive"])
def test_never_worse_than_an_independent_optimiser(law):
    rng = np.random.default_rng(7)
    sets = []
    for family in ("reasoning", "ocr"):
        res = load_results("paper", family)
        sets += [res.subset(rng.integers(0, len(res), len(res))) for _ in range(4)]
    sets += [synthetic(law, TRUTH[law], s, 0.01, PAPER_SIZES, PAPER_VS) for s in range(3)]
    for res in sets:
        fit = fit_law(res, law)
        assert fit.converged
        assert fit.sse <= _reference_sse(res, law) * (1 + 1e-9) + 1e-15


@pytest.mark.parametrize("k,const", [(1, False), (2, True), (2, False), (3, True)])
def test_batched_nnls_matches_scipy(k, const):
    rng = np.random.default_rng(k)
    phi = rng.random((50, 12, k))
    if const:
        phi[..., -1] = 1.0
    y = rng.normal(0, 1, 12)
    c, sse = nnls_batch(phi, y, const_last=const)
    for i in range(50):
        ref_c, ref_r = nnls(phi[i], y)
        assert sse[i] == pytest.approx(ref_r**2, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(c[i], ref_c, atol=1e-8)


def test_bootstrap_covers_the_truth_at_roughly_the_nominal_rate():
    """20 synthetic paper-shaped grids, 200 resamples each: the alpha/beta 95% interval covers the truth
    for 15-20 of them (measured offline over 160 data sets in blocks of 20: 92% overall, 16-20 per block)."""
    truth = {"A": 0.5, "alpha": 0.1, "beta": 0.03, "D": 0.1}
    hits = 0
    for seed in range(20):
        res = synthetic("multiplicative", truth, seed, 0.005, PAPER_SIZES, PAPER_VS)
        boot = bootstrap(res, fit_law(res), 200, seed=seed)
        lo, hi = boot.ci95("alpha_over_beta")
        hits += lo <= truth["alpha"] / truth["beta"] <= hi
    assert 0.75 <= hits / 20 <= 1.0


def test_bootstrap_is_seeded_and_both_schemes_run():
    res = load_results("paper", "reasoning")
    fit = fit_law(res)
    a, b = bootstrap(res, fit, 100, seed=3), bootstrap(res, fit, 100, seed=3)
    assert a.ci95("alpha_over_beta") == b.ci95("alpha_over_beta")
    assert bootstrap(res, fit, 100, seed=4).ci95("alpha") != a.ci95("alpha")
    llm = bootstrap(res, fit, 100, scheme="llm", seed=3)
    assert llm.to_dict()["scheme"] == "llm" and len(llm.samples["alpha"]) == 100
    assert set(a.to_dict()["ci95"]) == {"A", "alpha", "beta", "D", "alpha_over_beta", "v_star_q0", "v_star_q50"}


def test_paper_reasoning_fit_shows_the_papers_finding():
    res = load_results("paper", "reasoning")
    fit = fit_law(res)
    point = derived(fit, fit.law)
    assert fit.converged and fit.params["alpha"] > fit.params["beta"]
    assert point["v_star_q0"] == 1.0  # Q = 0: the fewest visual tokens
    assert 1.0 < point["v_star_q50"] < 576  # Q = 50: more, but far below 576
    boot = bootstrap(res, fit, 200, seed=0)
    assert boot.ci95("alpha_over_beta")[0] > 1 and boot.ci95("v_star_q0") == [1.0, 1.0]


def test_paper_ocr_fit_shows_the_opposite():
    res = load_results("paper", "ocr")
    fit = fit_law(res)
    assert fit.params["alpha"] < fit.params["beta"]
    assert derived(fit, fit.law)["v_star_q0"] == 576.0


def test_the_floor_d_is_reported_as_not_identified_on_the_paper_grid():
    res = load_results("paper", "reasoning")
    fit = fit_law(res)
    boot = bootstrap(res, fit, 100, seed=0)
    profile = profile_floor(res, fit)
    ok, why = identify(fit, boot, derived(fit, fit.law), profile)
    assert ok["D"] is False and "bound" in why["D"] and "profile" in why["D"]
    assert ok["alpha_over_beta"] and ok["v_star_q50"]
    assert profile.ci95[1] > 0.05  # D could be far from its estimate without a significantly worse fit


def test_a_flat_table_is_refused_with_a_clear_error():
    # A grid whose models all stayed at chance: nothing to fit, and it must say so rather than crash.
    flat = make_results([1, 1, 2, 2, 4, 4], [1, 4, 1, 4, 1, 4], error=np.ones(6) * 0.9)
    with pytest.raises(UserError, match="same error"):
        fit_law(flat)
