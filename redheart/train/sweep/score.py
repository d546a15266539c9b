"""The learning-rate sweep's selection score: pure functions from loss curves to a ranked table and a reason.

The score weighs four things: validation loss over the last 3 epochs (0.4), stability (0.2), learning
efficiency (0.2) and the over-fitting gap (0.2). Scoring each on its own ad-hoc scale (1/(1+x) of a loss,
a capped raw loss drop, 1/(1+std) of gradient norms) would make the weights not mean what they say: a
component whose values happen to spread more would dominate. Here every component is a raw number
where lower is better, defined as follows on one trial's per-epoch curves:

- val_loss: mean validation loss (sum of the per-module task losses) over the last `window` (3) epochs.
- instability: the total upward movement of the validation-loss curve, sum of max(0, v[t] - v[t-1]),
  divided by the curve's mean. The spread of gradient norms would be the obvious measure, but within an epoch that
  spread also counts a norm falling because the model is learning, so a rate that learns fast would be
  called unstable; a validation loss that goes back up is the instability that matters for the choice.
  (Gradient-norm statistics are still recorded per epoch for the paper.)
- inefficiency: mean training loss over all epochs, the area under the training curve. All candidates
  start from the same weights, so this is the common starting loss minus the mean improvement: lower
  means the rate reduced the loss sooner. (A first-minus-last drop would measure from the end of
  epoch 1, which hides what a fast rate learned in that epoch.)
- overfit_gap: mean over the last `window` epochs of max(0, validation - training task loss). An
  absolute difference would not do: validation below training (dropout is on
  while training) is not over-fitting, and a signed gap would reward a rate for a high training loss
  (a 4-rate tiny-preset sweep chose a rate worse on validation loss and efficiency that way). So the
  component only separates candidates when some of them do over-fit; otherwise all tie at 0.

Both curves use the same task losses (the R-Drop consistency term is left out of the training side).
Across candidates each component is min-max normalized to [0, 1] (0 = best candidate, 1 = worst; all 0
when the candidates tie), and the score is the weighted sum: lower is better. A trial with a non-finite
loss has diverged: each of its components is infinite and normalizes to 1. With several seeds per rate,
components are computed per trial and averaged per rate before normalizing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

COMPONENTS = ("val_loss", "instability", "inefficiency", "overfit_gap")
READABLE = {
    "val_loss": "validation loss",
    "instability": "stability",
    "inefficiency": "learning efficiency",
    "overfit_gap": "over-fitting gap",
}
DESCRIPTIONS = {
    "val_loss": "Mean validation loss over {window}",
    "instability": "validation-loss rise (instability)",
    "inefficiency": "mean training loss over all epochs (learning efficiency)",
    "overfit_gap": "over-fitting gap max(0, validation - training) over {window}",
}


@dataclass(frozen=True)
class Curve:
    """One trial's per-epoch task losses (sums over modules)."""

    train: tuple[float, ...]
    val: tuple[float, ...]


@dataclass(frozen=True)
class Score:
    lr: float
    trials: int
    raw: dict[str, float]  # per component, the mean over this rate's trials; inf = diverged
    normalized: dict[str, float]  # per component in [0, 1], lower = better
    total: float  # weighted sum of `normalized`, lower = better

    @property
    def diverged(self) -> bool:
        return not all(math.isfinite(v) for v in self.raw.values())


def components(curve: Curve, window: int = 3) -> dict[str, float]:
    """The four raw components of one trial (module docstring); all infinite when a loss is not finite."""
    train, val = curve.train, curve.val
    if not val or len(train) != len(val):
        raise ValueError(
            f"a curve needs the same number (>= 1) of train and val epochs, got {len(train)} and {len(val)}"
        )
    if window < 1:
        raise ValueError(f"the score window must be at least 1 epoch, got {window}")
    if not all(math.isfinite(v) for v in (*train, *val)):
        return {name: math.inf for name in COMPONENTS}
    last = slice(-min(window, len(val)), None)
    rise = sum(max(0.0, b - a) for a, b in zip(val, val[1:]))
    return {
        "val_loss": _mean(val[last]),
        "instability": rise / _mean(val),
        "inefficiency": _mean(train),
        "overfit_gap": _mean([max(0.0, v - t) for v, t in zip(val[last], train[last])]),
    }


def rank(per_lr: Mapping[float, Sequence[dict[str, float]]], weights: Sequence[float]) -> list[Score]:
    """Every rate's mean components, normalized across rates and weighted; best (lowest total) first."""
    if len(weights) != len(COMPONENTS) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"sweep weights must be {len(COMPONENTS)} non-negative numbers {COMPONENTS}, got {tuple(weights)}"
        )
    empty = [lr for lr, trials in per_lr.items() if not trials]
    if not per_lr or empty:
        raise ValueError(f"every candidate rate needs at least one trial; none for {empty or 'any rate'}")
    means = {lr: {name: _mean([t[name] for t in trials]) for name in COMPONENTS} for lr, trials in per_lr.items()}
    normalized: dict[float, dict[str, float]] = {lr: {} for lr in means}
    for name in COMPONENTS:
        finite = [m[name] for m in means.values() if math.isfinite(m[name])]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
        for lr, m in means.items():
            value = m[name]
            normalized[lr][name] = 1.0 if not math.isfinite(value) else (value - lo) / (hi - lo) if hi > lo else 0.0
    scores = [
        Score(
            lr,
            len(per_lr[lr]),
            means[lr],
            normalized[lr],
            sum(w * normalized[lr][n] for w, n in zip(weights, COMPONENTS)),
        )
        for lr in means
    ]
    return sorted(scores, key=lambda s: (s.total, s.lr))


def choose(table: Sequence[Score], finalists: Sequence[float] | None = None) -> Score:
    """The best-scoring rate among `finalists` (all rates when None); `table` is best first."""
    pool = [s for s in table if finalists is None or s.lr in finalists]
    if not pool:
        raise ValueError(f"none of the finalists {list(finalists or [])} has a score")
    return pool[0]


def explain(chosen: Score, table: Sequence[Score], epochs: int, window: int = 3) -> str:
    """The choice in words: the chosen rate against the runner-up, component by component."""
    span = _epoch_span(epochs, window)
    seeds = f"mean over {chosen.trials} seeds" if chosen.trials > 1 else "1 seed"
    head = (
        f"{format_lr(chosen.lr)} chosen: lowest weighted score {chosen.total:.3f} "
        f"({seeds}; lower is better, 0 = best on every component)"
    )
    others = [s for s in table if s.lr != chosen.lr]
    diverged = [format_lr(s.lr) for s in others if s.diverged]
    tail = f". Diverged (non-finite loss): {', '.join(diverged)}." if diverged else "."
    rivals = [s for s in others if not s.diverged]
    if not rivals:
        return head + (", the only candidate" if not others else "") + tail
    rival = rivals[0]
    parts: list[str] = []
    better: list[str] = []
    worse: list[str] = []
    for name in COMPONENTS:
        mine, theirs = chosen.raw[name], rival.raw[name]
        parts.append(f"{DESCRIPTIONS[name].format(window=span)} {mine:.3f} vs {theirs:.3f}")
        label = READABLE[name]
        (better if mine < theirs else worse if mine > theirs else []).append(label)
    verdict = f"better on {', '.join(better) or 'nothing'}" + (f", worse on {', '.join(worse)}" if worse else "")
    return (
        f"{head} vs {rival.total:.3f} for {format_lr(rival.lr)}, the runner-up. "
        + "; ".join(parts)
        + f". It is {verdict}"
        + tail
    )


def format_lr(lr: float) -> str:
    """A rate as written in the config: 2e-4, 1.5e-5."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _epoch_span(epochs: int, window: int) -> str:
    first = max(1, epochs - window + 1)
    return f"epoch {epochs}" if first == epochs else f"epochs {first}-{epochs}"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)
