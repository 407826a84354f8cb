"""Held-out checks: does the law predict cells it was not fitted on, and better than a naive guess?

- leave one LLM size out (the largest is the test that matters: extrapolating to a bigger model, as the
  paper does with 14B), and leave one V out;
- errors are absolute (|predicted - observed| error) and relative (divided by the observed error);
- two baselines on the same folds: the per-V mean of the remaining sizes (per-N mean of the remaining V when
  leaving a V out) and a log-linear least-squares fit, error ~ a + b log N + c log V;
- the two laws compared on held-out error and on AIC (all points).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lit_vlm.errors import UserError
from lit_vlm.scaling.fit import fit_law
from lit_vlm.scaling.laws import LAWS
from lit_vlm.scaling.table import Results, size_label


@dataclass
class HeldOut:
    held_out: str  # e.g. "N=7B" or "V=576"
    n_points: int
    mae: float | None = None  # mean |predicted - observed| error
    mean_rel: float | None = None  # mean |predicted - observed| / observed
    max_abs: float | None = None
    baselines: dict | None = None  # name -> {"mae", "mean_rel"}
    skipped: str | None = None  # why the fold could not be fitted


@dataclass
class Validation:
    law: str
    leave_one_size_out: list[HeldOut]
    leave_one_v_out: list[HeldOut]

    @property
    def largest_size(self) -> HeldOut:
        return self.leave_one_size_out[-1]

    def summary(self) -> dict:
        """Mean over folds of each method's absolute error, for both schemes."""
        out = {}
        for scheme, folds in (("size", self.leave_one_size_out), ("v", self.leave_one_v_out)):
            done = [f for f in folds if f.skipped is None]
            if not done:
                continue
            out[f"leave_one_{scheme}_out_mae"] = {"law": float(np.mean([f.mae for f in done]))}
            for name in done[0].baselines:
                out[f"leave_one_{scheme}_out_mae"][name] = float(np.mean([f.baselines[name]["mae"] for f in done]))
        return out

    def to_dict(self) -> dict:
        return {"law": self.law, "largest_size": asdict(self.largest_size), "summary": self.summary(),
                "leave_one_size_out": [asdict(f) for f in self.leave_one_size_out],
                "leave_one_v_out": [asdict(f) for f in self.leave_one_v_out]}


def validate(results: Results, law="multiplicative") -> Validation:
    """Leave-one-size-out (sizes ascending, so the largest is last) and leave-one-V-out errors."""
    sizes, vs = np.unique(results.n), np.unique(results.v)
    loso = [_fold(results, law, results.n == s, size_label(s), "v") for s in sizes]
    lovo = [_fold(results, law, results.v == v, f"V={v:g}", "n") for v in vs]
    return Validation(str(law), loso, lovo)


def compare_laws(results: Results, laws=tuple(LAWS)) -> dict:
    """Both laws on the same data: SSE, AIC, AICc (all points) and held-out error."""
    table = {}
    for name in laws:
        fit, val = fit_law(results, name), validate(results, name)
        n, k = fit.n_points, fit.n_params + 1  # +1: the noise variance
        aicc = fit.aic + 2 * k * (k + 1) / (n - k - 1) if n > k + 1 else float("inf")
        table[name] = {"sse": fit.sse, "rmse": fit.rmse, "n_params": fit.n_params, "aic": fit.aic, "aicc": aicc,
                       "largest_size_mae": val.largest_size.mae, **{k2: v["law"] for k2, v in val.summary().items()}}
    best_aic = min(table, key=lambda k: table[k]["aic"])
    held = [k for k in table if table[k].get("leave_one_size_out_mae") is not None]
    out = {"laws": table, "preferred_by_aic": best_aic}
    if held:
        out["preferred_by_leave_one_size_out"] = min(held, key=lambda k: table[k]["leave_one_size_out_mae"])
    return out


def _fold(results, law, test_mask, label, baseline_axis) -> HeldOut:
    train, test = results.subset(~test_mask), results.subset(test_mask)
    try:
        fit = fit_law(train, law)
    except UserError as e:  # e.g. only one size left: the law cannot be fitted, say so
        return HeldOut(label, len(test), skipped=str(e))
    pred = fit.predict(test.n, test.v)
    base = {"group_mean": _group_mean(train, test, baseline_axis), "loglinear": _loglinear(train, test)}
    return HeldOut(label, len(test), *_errors(pred, test.error),
                   baselines={k: dict(zip(("mae", "mean_rel"), _errors(p, test.error)[:2])) for k, p in base.items()})


def _errors(pred, obs):
    diff = np.abs(pred - obs)
    nonzero = obs > 0  # a cell with error 0 (accuracy 1) has no relative error
    rel = float((diff[nonzero] / obs[nonzero]).mean()) if nonzero.any() else float("nan")
    return float(diff.mean()), rel, float(diff.max())


def _group_mean(train, test, axis):
    """Mean training error at the same V (axis "v") or the same N (axis "n"); the overall mean if none."""
    key_train, key_test = (train.v, test.v) if axis == "v" else (train.n, test.n)
    return np.array([train.error[key_train == k].mean() if np.any(key_train == k) else train.error.mean()
                     for k in key_test])


def _loglinear(train, test):
    design = lambda r: np.column_stack([np.ones(len(r)), np.log(r.n), np.log(r.v)])  # noqa: E731
    coef = np.linalg.lstsq(design(train), train.error, rcond=None)[0]
    return design(test) @ coef
