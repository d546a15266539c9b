"""The fitted learning curve L(N, D) = E + A (N/N0)^-alpha + B (D/D0)^-beta over the study's points.

N is a point's parameter count and D its training records with the metric's target; N0 and D0 are the
smallest of each among the fitted points, so A and B are the size and data terms at the smallest model and
data. The fit is bounded least squares (every term non-negative: a loss falls towards E as N and D grow) from a
few starts. Intervals come from a bootstrap over the points: each replicate adds the fit's residuals, drawn
with replacement and inflated for the five fitted parameters, to the fitted values and fits again. A
prediction interval for one more point adds one drawn residual (a point's own noise) to each replicate.

A term is called flat, and its exponent not identifiable, when its change over the studied range is zero at the
fit or in more than 2.5 % of the replicates: the points do not show that axis moving the metric, and then no
number is given for its exponent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

PARAMETERS = ("E", "A", "alpha", "B", "beta")
LEVEL = 0.95  # two-sided coverage of every interval
EXPONENT_MAX = 3.0  # a power law steeper than N^-3 is not a learning curve; keeps the exponents bounded
_STARTS = ((0.3, 0.3), (1.0, 1.0), (0.3, 1.0), (1.0, 0.3))


@dataclass(frozen=True)
class Curve:
    theta: np.ndarray  # E, A, alpha, B, beta
    n0: float
    d0: float
    residuals: np.ndarray

    def __call__(self, n: Any, d: Any) -> np.ndarray:
        return law(self.theta, np.asarray(n, float), np.asarray(d, float), self.n0, self.d0)


def law(theta: np.ndarray, n: Any, d: Any, n0: float, d0: float) -> np.ndarray:
    e, a, alpha, b, beta = theta
    return np.asarray(e + a * (n / n0) ** -alpha + b * (d / d0) ** -beta)


def fit_curve(n: np.ndarray, d: np.ndarray, y: np.ndarray, n0: float, d0: float, start: Any = None) -> Curve:
    """Bounded least squares from several starts (or from `start`); the lowest cost wins."""
    spread = float(np.ptp(y)) or 1.0
    upper = [float(np.max(y)) + spread, 100 * spread, EXPONENT_MAX, 100 * spread, EXPONENT_MAX]
    starts = (
        [np.clip(start, 0, upper)]
        if start is not None
        else [np.array([max(0.0, float(np.min(y)) - spread / 2), spread / 2, al, spread / 2, be]) for al, be in _STARTS]
    )
    best = None
    for x0 in starts:
        x0 = np.minimum(np.maximum(x0, 0.0), np.array(upper) * 0.999)
        result = least_squares(lambda t: law(t, n, d, n0, d0) - y, x0, bounds=([0.0] * 5, upper), method="trf")
        if best is None or result.cost < best.cost:
            best = result
    assert best is not None
    return Curve(best.x, n0, d0, law(best.x, n, d, n0, d0) - y)


@dataclass(frozen=True)
class Fit:
    """A fit and its bootstrap, or the reason it has none."""

    curve: Curve | None
    replicates: np.ndarray  # (replicates, 5) parameter draws
    draws: np.ndarray  # (replicates,) residual drawn for each replicate: one more point's noise
    points: int
    reason: str | None  # why there is no fit (too few points, one value on an axis)
    flat: dict[str, bool]  # "size"/"data": that term shows no effect

    def interval(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1 - LEVEL) / 2 * 100
        return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))

    def curve_draws(self, n: float, d: float) -> np.ndarray:
        assert self.curve is not None
        return np.array([law(t, np.float64(n), np.float64(d), self.curve.n0, self.curve.d0) for t in self.replicates])


def fit(n: list[float], d: list[float], y: list[float], replicates: int, seed: int) -> Fit:
    """The curve over the points and its bootstrap; no fit when the points cannot determine five parameters."""
    na, da, ya = (np.asarray(v, dtype=float) for v in (n, d, y))
    empty = np.zeros((0, 5))
    if len(ya) <= len(PARAMETERS):
        reason = f"{len(ya)} points cannot determine the curve's {len(PARAMETERS)} parameters with noise left over"
        return Fit(None, empty, np.zeros(0), len(ya), reason, {})
    for axis, values in (("model sizes", na), ("data sizes", da)):
        if len(set(values.tolist())) < 2:
            return Fit(None, empty, np.zeros(0), len(ya), f"only one of the {axis}: that axis has no slope", {})
    curve = fit_curve(na, da, ya, float(na.min()), float(da.min()))
    fitted = ya + curve.residuals
    inflate = math.sqrt(len(ya) / (len(ya) - len(PARAMETERS)))
    pool = curve.residuals * inflate
    rng = np.random.default_rng(seed)
    thetas, draws = [], []
    for _ in range(replicates):
        sample = fitted + rng.choice(pool, size=len(ya), replace=True)
        thetas.append(fit_curve(na, da, sample, curve.n0, curve.d0, start=curve.theta).theta)
        draws.append(rng.choice(pool))
    thetas_a = np.array(thetas).reshape(-1, len(PARAMETERS))
    tiny = 1e-6 * (float(np.ptp(ya)) or 1.0)

    def flat(column: int, values: np.ndarray, origin: float) -> bool:
        """The term's change over the studied range: zero when its amplitude or its exponent is (then it is a
        constant that E absorbs)."""

        def change(theta: np.ndarray) -> float:
            return float(theta[column] * (1 - (values.max() / origin) ** -theta[column + 1]))

        spread = [change(t) <= tiny for t in thetas_a]
        return bool(change(curve.theta) <= tiny or (spread and np.mean(spread) > (1 - LEVEL) / 2))

    flats = {"size": flat(1, na, curve.n0), "data": flat(3, da, curve.d0)}
    return Fit(curve, thetas_a, np.array(draws), len(ya), None, flats)


def parameter_table(result: Fit) -> dict[str, Any]:
    """Each parameter with its interval; an exponent of a flat term is None with the reason."""
    if result.curve is None:
        return {"identifiable": False, "reason": result.reason}
    out: dict[str, Any] = {"identifiable": True, "n0": result.curve.n0, "d0": result.curve.d0, "parameters": {}}
    for i, name in enumerate(PARAMETERS):
        lo, hi = result.interval(result.replicates[:, i])
        entry: dict[str, Any] = {"value": float(result.curve.theta[i]), "interval": [lo, hi]}
        if (name == "alpha" and result.flat["size"]) or (name == "beta" and result.flat["data"]):
            axis = "size" if name == "alpha" else "data"
            entry = {"value": None, "interval": None, "reason": f"not identifiable: the {axis} term is flat"}
        out["parameters"][name] = entry
    out["theta"] = [float(v) for v in result.curve.theta]
    out["residual_sd"] = float(np.sqrt(np.sum(result.curve.residuals**2) / (result.points - len(PARAMETERS))))
    out["points"] = result.points
    out["flat"] = result.flat
    return out


def predict_point(result: Fit, n: float, d: float) -> dict[str, Any]:
    """The curve's value at (n, d) with its interval, and the prediction interval of one more point there."""
    assert result.curve is not None
    curve = result.curve_draws(n, d)
    return {
        "value": float(result.curve(n, d)),
        "interval": list(result.interval(curve)),
        "point_interval": list(result.interval(curve + result.draws)),
    }


def records_for_gain(theta: np.ndarray, d_ref: float, d0: float, gain: float) -> float | None:
    """Training records at which the data term has fallen by `gain` below its value at `d_ref` (None: never)."""
    b, beta = theta[3], theta[4]
    left = b * (d_ref / d0) ** -beta - gain
    if gain <= 0:
        return d_ref
    if left <= 0 or beta <= 0:
        return None
    with np.errstate(over="ignore"):
        records = float(d0 * np.power(b / left, 1 / beta))
    return records if math.isfinite(records) else None  # beyond any number of records a float holds
