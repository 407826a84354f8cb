"""Held-out validation: leave one LLM size / one V out, baselines, and the two laws compared."""

import numpy as np
import pytest

from lit_vlm.scaling import compare_laws, get_law, load_results, make_results, validate


def synthetic(seed=0, sizes=(0.1, 0.3, 1, 3, 10), vs=(1, 4, 16, 64, 576)):
    n, v = (a.ravel() for a in np.meshgrid(sizes, vs, indexing="ij"))
    truth = {"A": 0.6, "alpha": 0.3, "beta": 0.12, "D": 0.15}
    err = get_law("multiplicative").predict(truth, n, v) + np.random.default_rng(seed).normal(0, 0.002, n.size)
    return make_results(n, v, error=err)


def test_paper_validation_has_every_fold_and_both_baselines():
    val = validate(load_results("paper", "reasoning"))
    assert [f.held_out for f in val.leave_one_size_out] == ["N=0.5B", "N=1.8B", "N=4B", "N=7B"]
    assert len(val.leave_one_v_out) == 7
    big = val.largest_size
    assert big.held_out == "N=7B" and big.n_points == 7 and big.skipped is None
    assert 0 <= big.mae <= big.max_abs and big.mean_rel == pytest.approx(big.mae / 0.49, rel=0.2)
    assert set(big.baselines) == {"group_mean", "loglinear"}
    d = val.to_dict()
    assert d["largest_size"]["held_out"] == "N=7B" and "leave_one_size_out_mae" in d["summary"]


def test_the_law_beats_the_naive_baselines_when_it_is_true():
    val = validate(synthetic())
    s = val.summary()
    for scheme in ("leave_one_size_out_mae", "leave_one_v_out_mae"):
        assert s[scheme]["law"] < s[scheme]["group_mean"]
        assert s[scheme]["law"] < s[scheme]["loglinear"]
    assert val.largest_size.mae < 0.01  # extrapolating to the largest size stays at the noise level


def test_folds_that_cannot_be_fitted_are_skipped_with_the_reason():
    res = synthetic(sizes=(1, 3))
    val = validate(res)
    assert all("alpha cannot be fitted" in f.skipped for f in val.leave_one_size_out)
    assert all(f.skipped is None for f in val.leave_one_v_out)


def test_laws_compared_on_aic_and_held_out_error():
    cmp = compare_laws(synthetic())
    assert set(cmp["laws"]) == {"multiplicative", "additive"}
    for row in cmp["laws"].values():
        assert {"aic", "aicc", "sse", "leave_one_size_out_mae", "largest_size_mae"} <= set(row)
    assert cmp["preferred_by_aic"] == "multiplicative"  # the true law, with fewer parameters
    assert cmp["preferred_by_leave_one_size_out"] in cmp["laws"]


def test_intervals_and_relative_errors_with_infinite_or_zero_values():
    import warnings

    from lit_vlm.scaling.bootstrap import Bootstrap
    from lit_vlm.scaling.validate import _errors

    samples = np.r_[np.full(90, np.inf), np.linspace(10, 20, 10)]  # alpha/beta when most resamples fit beta = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value" RuntimeWarning from interpolating inf
        lo, hi = Bootstrap("case", 100, 0, {"alpha_over_beta": samples}).ci95("alpha_over_beta")
    assert np.isfinite(lo) and hi == np.inf
    mae, rel, worst = _errors(np.array([0.1, 0.3]), np.array([0.0, 0.2]))  # an error-free cell (accuracy 1)
    assert mae == pytest.approx(0.1) and rel == pytest.approx(0.5) and worst == pytest.approx(0.1)
