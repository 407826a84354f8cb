"""Which quantities the data actually determine.

Two checks:
- the bootstrap: a parameter on a bound, or with a 95% interval wider than its own value, is not identified;
- the profile likelihood of the floor D (the paper's known weak spot): fix D, refit everything else, and see
  how far D can move before the fit gets significantly worse. A bootstrap alone can hide this: when the data
  push D below 0, every resample pins it at 0 and the interval collapses to [0, 0].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lit_vlm.scaling.bootstrap import Bootstrap
from lit_vlm.scaling.fit import Fit, fit_law
from lit_vlm.scaling.laws import get_law
from lit_vlm.scaling.table import Results

CHI2_95 = 3.841  # 95% point of chi-square with 1 degree of freedom (likelihood-ratio interval)


@dataclass
class Profile:
    d: np.ndarray  # fixed values of the floor D
    sse: np.ndarray  # best SSE with D held at each value
    ci95: list[float]  # D values whose likelihood ratio to the best fit is within the 95% threshold
    flat: bool  # the interval covers most of the admissible range [0, min error)

    def to_dict(self) -> dict:
        return {"method": "profile likelihood, Gaussian noise: n log(SSE(D)/SSE_min) <= 3.84",
                "ci95": self.ci95, "flat": self.flat, "d": self.d.tolist(), "sse": self.sse.tolist()}


def profile_floor(results: Results, fit: Fit, n_values=25) -> Profile:
    """Profile the SSE over D in [0, min error): for each D, fit the law without a floor to error - D."""
    law = get_law(fit.law).without_floor()
    top = float(results.error.min())
    d = np.linspace(0.0, top, n_values + 1)[:-1]  # D = min error would leave a zero to fit with a power law
    d = np.unique(np.append(d, fit.params["D"]))  # the estimate itself, so a sharp profile is not missed
    sse = np.array([fit_law(_shift(results, x), law).sse for x in d])
    dev = len(results) * np.log(sse / min(fit.sse, float(sse.min())))  # likelihood-ratio statistic
    inside = np.flatnonzero(dev <= CHI2_95)
    lo, hi = inside.min(), inside.max()
    # interpolate each end to where the statistic crosses the threshold, unless it is the range's end
    ci = [_cross(d, dev, lo, lo - 1) if lo > 0 else 0.0, _cross(d, dev, hi, hi + 1) if hi < len(d) - 1 else top]
    return Profile(d, sse, ci, bool(ci[1] - ci[0] >= 0.5 * top))


def _cross(d, dev, i, j):
    t = (CHI2_95 - dev[i]) / (dev[j] - dev[i])
    return float(d[i] + t * (d[j] - d[i]))


def identify(fit: Fit, boot: Bootstrap | None, point: dict | None = None, profile: Profile | None = None,
             max_rel_width=1.0):
    """(name -> identified?, name -> short reason) for every parameter and derived quantity.

    `point` holds the full-data values of derived quantities (alpha_over_beta, v_star_q...).
    """
    ok, why = {}, {}
    for name, value in {**fit.params, **(point or {})}.items():
        ci = boot.ci95(name) if boot is not None and name in boot.samples else None
        span = f"bootstrap 95% CI [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "no bootstrap interval"
        if name in fit.on_bound:
            ok[name], why[name] = False, f"sits on its {fit.on_bound[name]} bound ({value:.3g}); {span}"
        elif ci is None:
            ok[name], why[name] = True, "not on a bound (no bootstrap run to measure its spread)"
        elif ci[0] == ci[1]:
            ok[name], why[name] = True, f"every bootstrap resample gives {ci[0]:.3g}"
        else:
            width = (ci[1] - ci[0]) / abs(value) if value and np.isfinite(value) else np.inf
            ok[name] = bool(width <= max_rel_width)
            verdict = "within" if ok[name] else "wider than"
            why[name] = f"{span} spans {width:.2f}x the estimate ({verdict} {max_rel_width:g}x)"
    if profile is not None and "D" in ok:
        lo, hi = profile.ci95
        if profile.flat:
            ok["D"] = False
        why["D"] += f"; profile likelihood 95% interval [{lo:.3g}, {hi:.3g}]" + (" (flat)" if profile.flat else "")
    return ok, why


def _shift(results: Results, d: float) -> Results:
    out = results.subset(np.arange(len(results)))
    out.error = results.error - d
    return out
