"""The two scaling-law forms, written so a fitter can solve their linear part exactly.

    multiplicative (the authors' code):  error = A * N^-alpha * V^-beta + D
    additive (Chinchilla-like):          error = A * N^-alpha + B * V^-beta + D

N is LLM parameters in billions (the paper's unit), V the number of visual tokens.
Both laws are linear in (A, [B], D) once the exponents (alpha, beta) are fixed: `columns()` returns that
design matrix and `jacobian()` the prediction's derivative in the exponents, all variable projection needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from lit_vlm.errors import UserError


@dataclass(frozen=True)
class Law:
    name: str
    linear: tuple[str, ...]  # coefficients solved by non-negative least squares; D (if any) is last
    exponents: tuple[str, ...] = ("alpha", "beta")
    floor: bool = True  # has the constant D; False when D is held fixed (profile likelihood)

    @property
    def params(self) -> tuple[str, ...]:
        """All parameter names, in the order they are reported."""
        names = ("A", "alpha", "beta") if self.name == "multiplicative" else ("A", "alpha", "B", "beta")
        return names + ("D",) if self.floor else names

    def without_floor(self) -> "Law":
        return replace(self, linear=self.linear[:-1], floor=False)

    def columns(self, alpha, beta, logn, logv):
        """Design matrix [..., n_points, n_linear] for exponents of any (broadcastable) batch shape."""
        a = np.asarray(alpha, dtype=float)[..., None]
        b = np.asarray(beta, dtype=float)[..., None]
        k = len(self.linear)
        out = np.empty(np.broadcast_shapes(a.shape, logn.shape) + (k,))
        if self.name == "multiplicative":
            out[..., 0] = np.exp(-a * logn - b * logv)
        else:
            out[..., 0] = np.exp(-a * logn)
            out[..., 1] = np.exp(-b * logv)
        if self.floor:
            out[..., -1] = 1.0
        return out

    def jacobian(self, cols, coef, logn, logv):
        """d(prediction)/d(alpha, beta) at fixed linear coefficients, for one exponent pair: [n, 2]."""
        out = np.empty((len(logn), 2))
        if self.name == "multiplicative":
            t = cols[:, 0] * coef[0]
            out[:, 0], out[:, 1] = -logn * t, -logv * t
        else:
            out[:, 0], out[:, 1] = -logn * cols[:, 0] * coef[0], -logv * cols[:, 1] * coef[1]
        return out

    def predict(self, params: dict, n_billion, v):
        """Predicted error at N (billions) and V, broadcasting over array inputs."""
        n = np.asarray(n_billion, dtype=float)
        v = np.asarray(v, dtype=float)
        d = params.get("D", 0.0)
        if self.name == "multiplicative":
            return params["A"] * n ** -params["alpha"] * v ** -params["beta"] + d
        return params["A"] * n ** -params["alpha"] + params["B"] * v ** -params["beta"] + d


LAWS = {
    "multiplicative": Law("multiplicative", linear=("A", "D")),
    "additive": Law("additive", linear=("A", "B", "D")),
}


def get_law(name) -> Law:
    if isinstance(name, Law):
        return name
    if name not in LAWS:
        raise UserError(f"unknown law {name!r}; allowed: {', '.join(LAWS)}")
    return LAWS[name]
