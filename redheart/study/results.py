"""`redheart study --collect`: the finished points as a table, a plot per metric and sentences from the numbers.

Nothing here trains. The sentences are computed: the change per doubling of data is the slope of a least-squares
line of the metric on log2(training records), per model size and for the linear probe; the noise of one point is
the pooled residual standard deviation around those lines; a difference is called an effect only when it exceeds
twice its standard error under that noise.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from redheart.config import RunConfig
from redheart.core.atomic import atomic_open, write_json
from redheart.core.rundir import RunDir
from redheart.study.points import EXTRA, METRICS, SCORES, data_size, finished_point, plan

# name -> (words, +1 when higher is better, -1 when lower is better)


@dataclass(frozen=True)
class StudyResult:
    points: list[dict[str, Any]]  # finished points, in point order
    missing: list[str]  # point folders not finished yet
    sentences: list[str]
    analysis: dict[str, Any]


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float, list[float]]:
    """Least-squares line of ys on log2(xs): (slope per doubling, intercept, residuals)."""
    x = np.log2(np.asarray(xs, dtype=float))
    y = np.asarray(ys, dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept), list(map(float, y - (slope * x + intercept)))


def analyse(points: list[dict[str, Any]], sizes: list[str]) -> dict[str, Any]:
    """Per metric: slopes per size and for the probe, pooled noise, size effects, the extra-records effect."""
    grid = [p for p in points if p["label"] != EXTRA]
    out: dict[str, Any] = {}
    for metric, (_, sign) in METRICS.items():
        slopes: dict[str, float] = {}
        residuals: list[float] = []
        dof = 0
        for size in sizes:
            row = [p for p in grid if p["size"] == size and p["model"][metric] is not None]
            if len(row) >= 2 and len({p["train_records"] for p in row}) >= 2:
                slope, _, res = _fit([data_size(p, metric) for p in row], [p["model"][metric] for p in row])
                slopes[size] = slope
                residuals += res
                dof += len(row) - 2
        noise = math.sqrt(sum(r * r for r in residuals) / dof) if dof > 0 else None
        probe = {p["label"]: p for p in grid if p["probe"][metric] is not None}
        probe_slope = None
        if len({p["train_records"] for p in probe.values()}) >= 2:
            probe_slope = _fit(
                [data_size(p, metric) for p in probe.values()], [p["probe"][metric] for p in probe.values()]
            )[0]
        out[metric] = {
            "sign": sign,
            "slopes": slopes,
            "probe_slope": probe_slope,
            "noise": noise,
            "noise_dof": dof,
            "slope_se": _slope_se(noise, grid, sizes, metric),
            "size_steps": _size_steps(grid, sizes, metric),
            "extra": _extra_effects(points, metric),
        }
    return out


def _slope_se(noise: float | None, grid: list[dict[str, Any]], sizes: list[str], metric: str) -> dict[str, float]:
    """Standard error of each size's slope when every point carries `noise`: noise / sqrt(Sxx)."""
    if noise is None:
        return {}
    out = {}
    for size in sizes:
        x = np.log2([data_size(p, metric) for p in grid if p["size"] == size and p["model"][metric] is not None])
        sxx = float(((x - x.mean()) ** 2).sum()) if len(x) else 0.0
        if sxx > 0:
            out[size] = noise / math.sqrt(sxx)
    return out


def _size_steps(grid: list[dict[str, Any]], sizes: list[str], metric: str) -> list[dict[str, Any]]:
    """Each size against the next larger one: the mean paired difference over the fractions both finished."""
    steps = []
    for small, large in itertools.pairwise(sizes):
        a = {p["label"]: p for p in grid if p["size"] == small and p["model"][metric] is not None}
        b = {p["label"]: p for p in grid if p["size"] == large and p["model"][metric] is not None}
        shared = [label for label in a if label in b]
        if not shared:
            continue
        diffs = [b[label]["model"][metric] - a[label]["model"][metric] for label in shared]
        largest = max(shared, key=lambda label: a[label]["train_records"])
        steps.append(
            {
                "from": small,
                "to": large,
                "fractions": len(shared),
                "mean_difference": float(np.mean(diffs)),
                "difference_at_most_data": diffs[shared.index(largest)],
                "most_data": largest,
                "parameters": [a[shared[0]]["parameters"], b[shared[0]]["parameters"]],
            }
        )
    return steps


def _extra_effects(points: list[dict[str, Any]], metric: str) -> dict[str, float]:
    """Per size: the "all+extra" point minus the "all" point (the verdict-only records' effect)."""
    by = {(p["size"], p["label"]): p for p in points}
    return {
        size: by[(size, EXTRA)]["model"][metric] - by[(size, "all")]["model"][metric]
        for size, label in by
        if label == EXTRA
        and (size, "all") in by
        and by[(size, EXTRA)]["model"][metric] is not None
        and by[(size, "all")]["model"][metric] is not None
    }


def _signed(value: float, digits: int = 4) -> str:
    return f"{value:+.{digits}f}"


def sentences(analysis: dict[str, Any], points: list[dict[str, Any]], sizes: list[str]) -> list[str]:
    """The findings in words, each number computed above; better/worse follows each metric's direction."""
    out = []
    present = [s for s in sizes if any(p["size"] == s for p in points)]
    for metric, (words, sign) in METRICS.items():
        a = analysis[metric]
        if not a["slopes"]:
            out.append(f"{words}: too few finished points for a curve.")
            continue
        noise, se = a["noise"], a["slope_se"]
        parts = [
            f"{size} {_signed(slope)}" + (" (within noise)" if size in se and abs(slope) <= 2 * se[size] else "")
            for size, slope in a["slopes"].items()
        ]
        probe = f"; the linear probe {_signed(a['probe_slope'])}" if a["probe_slope"] is not None else ""
        noise_words = (
            f" Point-to-point noise (residual sd around those lines, {a['noise_dof']} degrees of freedom): {noise:.4f}."
            if noise is not None
            else " Too few points to estimate the noise."
        )
        out.append(
            f"{words}, change per doubling of the training data (least-squares slope on log2 records): "
            f"{', '.join(parts)}{probe}.{noise_words}"
        )
        for step in a["size_steps"]:
            diff = step["mean_difference"]
            threshold = 2 * noise * math.sqrt(2 / step["fractions"]) if noise is not None else None
            verdict = (
                ("helps" if diff * sign > 0 else "hurts")
                if threshold is None or abs(diff) > threshold
                else "makes no difference beyond the noise"
            )
            bound = f" (two standard errors: {threshold:.4f})" if threshold is not None else ""
            out.append(
                f"{words}: {step['to']} ({step['parameters'][1]:,} parameters) against {step['from']} "
                f"({step['parameters'][0]:,}) {verdict}: mean paired difference {_signed(diff)} over "
                f"{step['fractions']} data sizes{bound}, {_signed(step['difference_at_most_data'])} at "
                f"{step['most_data']} of the data."
            )
        for size, diff in a["extra"].items():
            better = "better" if diff * sign > 0 else "worse"
            out.append(
                f"{words}: adding the verdict-only records to all training records ({size}) moves it by "
                f"{_signed(diff)} ({better})."
            )
        out.append(_next_gain(metric, words, sign, a, points, present))
    return out


def _state(gain: float, real: bool) -> str:
    return ("improves it" if gain > 0 else "worsens it") if real else "no change beyond the noise"


def _next_gain(
    metric: str, words: str, sign: int, a: dict[str, Any], points: list[dict[str, Any]], sizes: list[str]
) -> str:
    """Where the curve points: a doubling of data at the largest size against the last size step.

    Each axis is judged as in the sentences before it: the slope against twice its standard error, the size
    step's mean paired difference against twice that difference's standard error.
    """
    largest = next((s for s in reversed(sizes) if s in a["slopes"]), None)
    if largest is None:
        return f"{words}: no curve to read the next gain from."
    data_gain = a["slopes"][largest] * sign
    data_real = largest in a["slope_se"] and abs(data_gain) > 2 * a["slope_se"][largest]
    step = a["size_steps"][-1] if a["size_steps"] else None
    size_gain = step["mean_difference"] * sign if step else 0.0
    size_real = (
        step is not None
        and a["noise"] is not None
        and abs(size_gain) > 2 * a["noise"] * math.sqrt(2 / step["fractions"])
    )
    found = f"a doubling of data at {largest}: {data_gain:+.4f}, {_state(data_gain, data_real)}"
    if step is not None:
        found += f"; {step['from']} to {step['to']}: {size_gain:+.4f}, {_state(size_gain, size_real)}"
    data_helps, size_helps = data_real and data_gain > 0, size_real and size_gain > 0
    if data_helps and (not size_helps or data_gain >= size_gain):
        where = "the next gain would come from more training data"
    elif size_helps:
        where = "the next gain would come from a larger model"
    else:
        where = (
            "neither more of these records nor a larger model improves it beyond the noise, so the next gain has "
            "to come from elsewhere (the inputs or the objective)"
        )
    full = [p for p in points if p["size"] == largest and p["label"] == "all" and p["model"][metric] is not None]
    versus = ""
    if full and full[0]["probe"][metric] is not None:
        lead = (full[0]["model"][metric] - full[0]["probe"][metric]) * sign
        versus = (
            f" At all the data {largest} is {'ahead of' if lead > 0 else 'behind'} the linear probe by {abs(lead):.4f}."
        )
    return f"{words}: {where} (improvement by {found}).{versus}"


def collect(run: RunDir, config: RunConfig) -> StudyResult:
    """Read every finished point, write results.json, results.csv and one plot per metric; train nothing."""
    import torch

    from redheart.study.plot import plot_metric

    # Points a CUDA machine ran (the full preset) are read on any machine; only this machine's are missing.
    cuda = torch.cuda.is_available()
    points = plan(run, config, cuda=True)
    here = {p.index for p in plan(run, config, cuda=cuda)}
    done = {p: finished_point(run, p) for p in points}
    finished = [r for r in done.values() if r is not None]
    if not finished:
        raise ValueError(f"no finished study point in {run.study}; run `redheart study` (or --point K) first")
    missing = [p.folder(run).name for p, r in done.items() if r is None and p.index in here]
    sizes = list(dict.fromkeys(p["size"] for p in sorted(finished, key=lambda r: r["index"])))
    analysis = analyse(finished, sizes)
    words = sentences(analysis, finished, sizes)
    if not cuda and config.study.full_with_cuda and not any(p["size"] == "full" for p in finished):
        words.append("The full preset was not studied: it joins only when CUDA is present, and this machine has none.")
    if missing:
        words.append(f"Incomplete study, missing points: {', '.join(missing)}.")
    result = StudyResult(finished, missing, words, analysis)
    write_json(
        run.study / "results.json",
        {
            "sizes": sizes,
            "fractions": list(config.study.fractions),
            "epochs": config.study.epochs,
            "seed": config.study.seed,
            "points": finished,
            "missing": missing,
            "sentences": words,
            "analysis": analysis,
            "train_seconds": sum(p["train_seconds"] for p in finished),  # epochs only: no validation, no probes
        },
    )
    rows = [
        {
            "point": p["index"],
            "size": p["size"],
            "data": p["label"],
            "train_records": p["train_records"],
            "verdict_train_records": p["verdict_train_records"],
            "parameters": p["parameters"],
            "lr": p["lr"],
            "epochs": p["epochs"],
            "train_seconds": p["train_seconds"],
            **{f"model_{k}": p["model"][k] for k in SCORES},
            **{f"probe_{k}": p["probe"][k] for k in SCORES},
        }
        for p in finished
    ]
    with atomic_open(run.study / "results.csv", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    for metric, (label, _) in METRICS.items():
        plot_metric(run.study / f"curve_{metric}.png", finished, sizes, metric, label)
    return result


def format_study(result: StudyResult) -> str:
    """The table and the sentences, for the terminal."""
    head = f"{'size':<7}{'data':>10}{'records':>9}{'params':>12}{'seconds':>9}"
    head += "".join(f"{name[:14]:>16}" for name in SCORES)
    lines = [head + "   (model / probe)"]
    for p in result.points:
        cells = "".join(f"{_pair(p, k):>16}" for k in SCORES)
        lines.append(
            f"{p['size']:<7}{p['label']:>10}{p['train_records']:>9,}{p['parameters']:>12,}"
            f"{p['train_seconds']:>9.0f}{cells}"
        )
    return "\n".join(lines + [""] + result.sentences)


def _pair(point: dict[str, Any], metric: str) -> str:
    model, probe = point["model"][metric], point["probe"][metric]
    return "—" if model is None else f"{model:.3f}/{probe:.3f}" if probe is not None else f"{model:.3f}/—"
