"""`redheart study --collect`: the finished points as a table, a plot per metric and sentences from the numbers.

Nothing here trains. The sentences are computed: the change per doubling of data is the slope of a least-squares
line of the metric on log2(training records), per model size and for the linear probe; the noise of one point is
the pooled residual standard deviation around those lines; a difference is called an effect only when it exceeds
twice its standard error under that noise, and nothing is called an effect when no degrees of freedom are left to
estimate the noise. The losses also get the fitted curve L(N, D) (redheart.study.fit): its parameters with
intervals, a held-out check on the largest studied size, and a prediction for the full model.
"""

from __future__ import annotations

import csv
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from redheart.config import RunConfig
from redheart.core.atomic import atomic_open, finite_or_null, read_json, write_json
from redheart.core.rundir import RunDir
from redheart.scoring.metrics import METRICS
from redheart.study.fit import EXPONENT_MAX, PARAMETERS, Fit, fit, parameter_table, predict_point, records_for_gain
from redheart.study.points import (
    EXTRA,
    SCORES,
    VERDICT_METRICS,
    Point,
    chosen_lr,
    data_size,
    finished_point,
    plan,
    point_plan,
    stale_parts,
)


def fitted_value(metric: str, value: float) -> float:
    """What the curve L(N, D) is fitted to, a loss (lower is better, never negative): the metric itself, or
    1 - metric for a score in [0, 1] where higher is better (the error rate, 1 - macro-F1). Emotion KL is emotion
    cross-entropy less the targets' entropy, a constant, so it has the same curve shifted."""
    return 1.0 - value if METRICS[metric].higher_is_better else value


def fitted_words(metric: str) -> str:
    words = METRICS[metric].words
    return f"1 - {words}" if METRICS[metric].higher_is_better else words


NO_NOISE = "cannot be told from the noise (no degrees of freedom are left to estimate it)"


@dataclass(frozen=True)
class StudyResult:
    points: list[dict[str, Any]]  # finished points, in point order
    missing: list[str]  # point folders not finished yet
    stale: dict[str, list[str]]  # point folder -> what changed since it was trained (refused)
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
    for metric in SCORES:
        sign = METRICS[metric].sign
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
    for metric in SCORES:
        words, sign = METRICS[metric].words, METRICS[metric].sign
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
                NO_NOISE
                if threshold is None
                else ("helps" if diff * sign > 0 else "hurts")
                if abs(diff) > threshold
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
            # One difference of two points: its standard error is the noise times sqrt(2).
            threshold = 2 * noise * math.sqrt(2) if noise is not None else None
            if threshold is None:
                judged = NO_NOISE
            elif abs(diff) > threshold:
                judged = (
                    "better" if diff * sign > 0 else "worse"
                ) + f" beyond the noise (two standard errors: {threshold:.4f})"
            else:
                judged = f"no change beyond the noise (two standard errors: {threshold:.4f})"
            out.append(
                f"{words}: adding the verdict-only records to all training records ({size}) moves it by "
                f"{_signed(diff)}: {judged}."
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
    if a["noise"] is None:
        return f"{words}: where the next gain comes from {NO_NOISE}."
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


def curve_analysis(
    points: list[dict[str, Any]],
    full_parameters: int,
    replicates: int,
    seed: int,
    metrics: tuple[str, ...] = SCORES,
) -> dict[str, dict[str, Any]]:
    """Per metric: the curve's parameters, the held-out check on the largest size, the prediction for full."""
    grid = [p for p in points if p["label"] != EXTRA]
    out: dict[str, dict[str, Any]] = {}
    for metric in metrics:
        rows = [p for p in grid if p["model"].get(metric) is not None]
        n = [float(p["parameters"]) for p in rows]
        d = [float(data_size(p, metric)) for p in rows]
        y = [fitted_value(metric, float(p["model"][metric])) for p in rows]
        whole = fit(n, d, y, replicates, seed)
        entry: dict[str, Any] = {"fit": parameter_table(whole)}
        entry["held_out"] = _held_out(rows, metric, replicates, seed)
        entry["prediction"] = _prediction(whole, rows, metric, full_parameters)
        out[metric] = entry
    return out


def _held_out(rows: list[dict[str, Any]], metric: str, replicates: int, seed: int) -> dict[str, Any]:
    """Fit without the largest studied size; predict its points with the interval of one more point."""
    by_size = sorted({(p["parameters"], p["size"]) for p in rows})
    if len(by_size) < 3:
        return {"size": None, "reason": f"{len(by_size)} model sizes: fitting without one leaves a single size"}
    held = by_size[-1][1]
    train = [p for p in rows if p["size"] != held]
    result = fit(
        [float(p["parameters"]) for p in train],
        [float(data_size(p, metric)) for p in train],
        [fitted_value(metric, float(p["model"][metric])) for p in train],
        replicates,
        seed,
    )
    if result.curve is None:
        return {"size": held, "reason": f"the fit without {held} is not identifiable: {result.reason}"}
    checks = []
    for p in (q for q in rows if q["size"] == held):
        guess = predict_point(result, float(p["parameters"]), float(data_size(p, metric)))
        lo, hi = (float(v) for v in guess["point_interval"])
        observed = fitted_value(metric, float(p["model"][metric]))
        checks.append(
            {
                "label": p["label"],
                "observed": observed,
                "predicted": guess["value"],
                "error": observed - guess["value"],
                "interval": [lo, hi],
                "inside": lo <= observed <= hi,
            }
        )
    return {"size": held, "reason": None, "fitted_on": len(train), "flat": result.flat, "points": checks}


def _prediction(result: Fit, rows: list[dict[str, Any]], metric: str, full_parameters: int) -> dict[str, Any]:
    """The metric at the full model's size for the bundled data and 2x and 4x of it, and the gain over the
    largest studied size at the bundled data, with the records that would buy the same gain at that size."""
    if result.curve is None:
        return {"reason": f"no fit: {result.reason}"}
    if result.flat["size"]:
        return {"reason": "the size term is flat in these points, so the curve cannot say what a larger model does"}
    reference = max(rows, key=lambda p: p["parameters"])
    n_ref = float(reference["parameters"])
    d0 = float(max(data_size(p, metric) for p in rows))
    at = {}
    for factor in (1, 2, 4):
        at[f"{factor}x"] = {"records": d0 * factor, **predict_point(result, full_parameters, d0 * factor)}
    noise = float(np.sqrt(np.sum(result.curve.residuals**2) / (result.points - len(PARAMETERS))))
    gains = result.curve_draws(n_ref, d0) - result.curve_draws(full_parameters, d0)
    gain = float(result.curve(n_ref, d0) - result.curve(full_parameters, d0))
    lo, hi = result.interval(gains)
    records: float | None = None
    records_reason: str | None
    records_interval: list[float] | None = None
    if result.flat["data"]:
        records_reason = "the data term is flat in these points: no number of records is shown to move it"
    else:
        records = records_for_gain(result.curve.theta, d0, result.curve.d0, gain)
        draws = [records_for_gain(t, d0, result.curve.d0, g) for t, g in zip(result.replicates, gains)]
        never = sum(r is None for r in draws) / len(draws) if draws else 1.0
        records_reason = (
            None
            if records is not None
            else "the data term at these records is smaller than the gain: no number of records reaches it"
        )
        finite = [r for r in draws if r is not None]
        records_interval = list(result.interval(np.array(finite))) if finite and never <= 0.025 else None
    return {
        "reason": None,
        "full_parameters": full_parameters,
        "reference": reference["size"],
        "reference_parameters": int(n_ref),
        "records": d0,
        "at": at,
        "gain": gain,
        "gain_interval": [lo, hi],
        # The curve cannot make a larger model worse (A >= 0), so the gain's interval never reaches below zero;
        # "beyond the noise" asks more: even its lower end exceeds one point's noise (the fit's residual sd).
        "noise": noise,
        "beyond_noise": lo > noise,
        "records_for_gain": records,
        "records_for_gain_interval": records_interval,
        "records_reason": records_reason,
    }


def curve_sentences(curves: dict[str, dict[str, Any]]) -> list[str]:
    out = []
    for metric, entry in curves.items():
        words = fitted_words(metric)
        unit = "training records with a verdict (human-labelled)" if metric in VERDICT_METRICS else "training records"
        table = entry["fit"]
        if not table["identifiable"]:
            out.append(f"{words}: the curve E + A/N^alpha + B/D^beta is not identifiable here: {table['reason']}.")
            continue
        params = []
        for name, value in table["parameters"].items():
            if value["value"] is None:
                params.append(f"{name} {value['reason']}")
            else:
                lo, hi = value["interval"]
                bound = (
                    " (its interval reaches the bound: these points do not determine it)"
                    if name in ("alpha", "beta") and hi >= 0.99 * EXPONENT_MAX
                    else ""
                )
                params.append(f"{name} {value['value']:.4g} [{lo:.4g}, {hi:.4g}]{bound}")
        out.append(
            f"{words}: fitted curve over {table['points']} points (N in units of {table['n0']:,.0f} parameters, D in "
            f"units of {table['d0']:,.0f} {unit}; 95 % bootstrap intervals): {', '.join(params)}; residual sd "
            f"{table['residual_sd']:.4f}."
        )
        held = entry["held_out"]
        if held["reason"] is not None:
            out.append(f"{words}: no held-out check: {held['reason']}.")
        else:
            inside = sum(c["inside"] for c in held["points"])
            errors = ", ".join(
                f"{c['label']} {c['error']:+.4f} (interval {c['interval'][0]:.4f} to {c['interval'][1]:.4f})"
                for c in held["points"]
            )
            trust = (
                "the curve predicted the held-out size"
                if inside == len(held["points"])
                else "the curve did not predict the held-out size, so its extrapolation is not to be trusted"
            )
            out.append(
                f"{words}: fitted without {held['size']}, the curve predicts {inside} of {len(held['points'])} of its "
                f"points inside their 95 % intervals (error observed - predicted: {errors}): {trust}."
            )
        pred = entry["prediction"]
        if pred["reason"] is not None:
            out.append(f"{words}: no prediction for the full model: {pred['reason']}.")
            continue
        at = "; ".join(
            f"{v['records']:,.0f} records ({k}) {v['value']:.4f} [{v['interval'][0]:.4f}, {v['interval'][1]:.4f}]"
            for k, v in pred["at"].items()
        )
        lo, hi = pred["gain_interval"]
        beat = (
            f"full beats {pred['reference']} beyond the noise (the lower end of the gain's interval exceeds one "
            f"point's noise, {pred['noise']:.4f})"
            if pred["beyond_noise"]
            else f"full is not told apart from {pred['reference']} beyond the noise (the lower end of the gain's "
            f"interval does not exceed one point's noise, {pred['noise']:.4f}; the curve's form cannot make a larger "
            "model worse, so the gain is never below zero)"
        )
        if pred["records_for_gain"] is None:
            more = pred["records_reason"]
        else:
            interval = pred["records_for_gain_interval"]
            span = (
                f" [{interval[0]:,.0f}, {interval[1]:,.0f}]" if interval else " (no interval: in some replicates none)"
            )
            more = (
                f"{pred['reference']} reaches the same gain with {pred['records_for_gain']:,.0f}{span} {unit}, "
                f"{pred['records_for_gain'] - pred['records']:+,.0f} against today's {pred['records']:,.0f}"
            )
        out.append(
            f"{words}: the curve predicts the full model ({pred['full_parameters']:,} parameters) at {at}. At "
            f"{pred['records']:,.0f} records {beat}: {pred['reference']} ({pred['reference_parameters']:,}) minus "
            f"full = {pred['gain']:+.4f} [{lo:+.4f}, {hi:+.4f}]; {more}."
        )
    return out


def convergence_check(
    run: RunDir, config: RunConfig, finished: list[dict[str, Any]], analysis: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The points trained again with twice the step cap (`redheart study --check`) against their originals."""
    by = {f"{p['size']}:{p['label']}": p for p in finished}
    rows, words = [], []
    for name in config.study.check:
        original = by.get(name)
        if original is None:
            continue
        stored = RunDir(run.study_check(2, point_folder_name(run, original))).point_record
        again = read_json(stored) if stored.exists() else None
        if again is None:
            words.append(f"Convergence check of {name}: not run (`redheart study --check`).")
            continue
        deltas = {}
        for metric in SCORES:
            a, b = original["model"][metric], again["model"][metric]
            noise = analysis[metric]["noise"]
            if a is None or b is None:
                continue
            deltas[metric] = {"delta": b - a, "noise": noise, "within": noise is not None and abs(b - a) < noise}
        inside = [m for m, v in deltas.items() if v["within"]]
        rows.append(
            {
                "point": name,
                "steps": [original["steps"], again["steps"]],
                "caps": [original["max_steps"], again["max_steps"]],
                "deltas": deltas,
            }
        )
        parts = ", ".join(
            f"{METRICS[m].words} {v['delta']:+.4f}" + (f" (noise {v['noise']:.4f})" if v["noise"] is not None else "")
            for m, v in deltas.items()
        )
        words.append(
            f"Convergence check of {name}: with twice the step cap ({again['max_steps']:,} steps; it trained "
            f"{again['steps']:,}, best at {again['steps_to_best']:,}, against {original['steps']:,} and "
            f"{original['steps_to_best']:,}) the metrics move by {parts}: {len(inside)} of {len(deltas)} less than "
            f"the point-to-point noise."
        )
    return rows, words


def point_folder_name(run: RunDir, record: dict[str, Any]) -> str:
    """The folder name of the point a point.json describes (its index, size and fraction name the folder)."""
    return Point(record["index"], record["size"], record["fraction"]).folder(run).name


def rate_sentence(run: RunDir, sizes: list[str]) -> str:
    """Each size's learning rate with its sweep (candidates, epochs, records, read from the sweep's own files),
    and whether the rate lies at an end of the candidates (the best may lie beyond)."""
    from redheart.study.points import size_sweep_run
    from redheart.train.sweep.score import format_lr

    parts = []
    for size in sizes:
        sweep = size_sweep_run(run, size)
        lr = chosen_lr(run, size)
        if lr is None or not sweep.sweep_results.exists():
            parts.append(f"{size} none (its sweep has not been collected)")
            continue
        results = read_json(sweep.sweep_results)
        grid = sorted(c["lr"] for c in results["candidates"])
        records = len(read_json(sweep.split_manifest)["train"])
        edge = (
            ", the largest candidate: a larger rate was not tried"
            if lr == grid[-1] and len(grid) > 1
            else ", the smallest candidate: a smaller rate was not tried"
            if lr == grid[0] and len(grid) > 1
            else ""
        )
        parts.append(
            f"{size} {format_lr(lr)} (of {', '.join(format_lr(v) for v in grid)}, {results['epochs']} epochs of "
            f"{records:,} training records{edge})"
        )
    return f"Learning rates, each size's own from a short sweep: {'; '.join(parts)}."


def convergence_sentences(points: list[dict[str, Any]]) -> list[str]:
    capped = [f"{p['size']} at {p['label']}" for p in points if not p["converged"]]
    caps = sorted({p["max_steps"] for p in points})
    cap = ", ".join(f"{c:,}" for c in caps)
    if not capped:
        return [
            f"Every point stopped because its validation loss had not improved for {points[0]['patience_steps']:,} "
            f"optimizer steps, before the step cap of {cap} steps: each is converged in that sense."
        ]
    return [
        f"Not converged (stopped by the step cap of {cap} steps while the validation loss was still improving "
        f"within the patience window): {', '.join(capped)}. Their numbers are what that many steps reach, an upper "
        "bound on their loss; a longer run may do better, so differences that involve them understate what "
        "training to convergence would show."
    ]


def collect(run: RunDir, config: RunConfig) -> StudyResult:
    """Read every finished point, write results.json, results.csv and one plot per metric; train nothing.

    A point whose fingerprint differs from today's (config, learning rate, training or validation ids,
    embeddings) is refused and named with what changed.
    """
    import torch

    from redheart.study.plot import plot_metric

    # Points a CUDA machine ran (the full preset) are read on any machine; only this machine's are missing.
    cuda = torch.cuda.is_available()
    finished, missing, stale = _current_points(run, config, cuda)
    sizes = list(dict.fromkeys(p["size"] for p in sorted(finished, key=lambda r: r["index"])))
    analysis = analyse(finished, sizes)
    curves = curve_analysis(finished, _full_parameters(config), config.study.fit_bootstrap, config.study.fit_seed)
    checks, check_words = convergence_check(run, config, finished, analysis)
    words = (
        [rate_sentence(run, sizes)]
        + convergence_sentences(finished)
        + sentences(analysis, finished, sizes)
        + curve_sentences(curves)
        + check_words
        + _caveats(config, finished, missing, stale, cuda)
    )
    result = StudyResult(finished, missing, stale, words, analysis)
    write_json(run.study_results, finite_or_null(_summary(run, config, result, sizes, curves, checks)))
    _write_table(run, finished)
    for metric in SCORES:
        plot_metric(run.study_curve(metric), finished, sizes, metric, curves.get(metric))
    return result


def _current_points(
    run: RunDir, config: RunConfig, cuda: bool
) -> tuple[list[dict[str, Any]], list[str], dict[str, list[str]]]:
    """The finished points made from today's inputs, in point order; the folders of the points this machine
    could run that are not finished; and the finished ones refused as stale, with what changed."""
    points = plan(run, config, cuda=True)
    here = {p.index for p in plan(run, config, cuda=cuda)}
    done = {p: finished_point(run, p) for p in points}
    stale: dict[str, list[str]] = {}
    finished = []
    for point, record in done.items():
        if record is None:
            continue
        lr = chosen_lr(run, point.size)
        changed = (
            ["lr (the size's learning-rate sweep has no choice)"]
            if lr is None
            else stale_parts(record.get("fingerprint"), point_plan(run, config, point, lr).fingerprint)
        )
        if changed:
            stale[point.folder(run).name] = changed
        else:
            finished.append(record)
    if not finished:
        raise ValueError(
            f"no finished, current study point in {run.study}"
            + (f" (refused as stale: {', '.join(stale)})" if stale else "")
            + "; run `redheart study` (or --point K) first"
        )
    missing = [p.folder(run).name for p, r in done.items() if r is None and p.index in here]
    return finished, missing, stale


def _full_parameters(config: RunConfig) -> int:
    """The full preset's parameter count at the run's encoder: the N the fitted curves predict at."""
    from redheart.config import preset
    from redheart.model.model import parameter_table as module_table

    return sum(
        r["parameters"] for r in module_table(preset("full").model, config.encoder.dim, config.encoder.max_segments)
    )


def _caveats(
    config: RunConfig,
    finished: list[dict[str, Any]],
    missing: list[str],
    stale: dict[str, list[str]],
    cuda: bool,
) -> list[str]:
    """What the study leaves out: the full preset without CUDA, the stale points, the missing ones."""
    words = []
    if not cuda and config.study.full_with_cuda and not any(p["size"] == "full" for p in finished):
        words.append("The full preset was not studied: it joins only when CUDA is present, and this machine has none.")
    if stale:
        words.append(
            "Refused as stale (trained on other inputs than today's; run them again): "
            + "; ".join(f"{name} (changed: {', '.join(parts)})" for name, parts in stale.items())
            + "."
        )
    if missing:
        words.append(f"Incomplete study, missing points: {', '.join(missing)}.")
    return words


def _summary(
    run: RunDir,
    config: RunConfig,
    result: StudyResult,
    sizes: list[str],
    curves: dict[str, dict[str, Any]],
    checks: list[dict[str, Any]],
) -> dict[str, Any]:
    """results.json: the study's settings, its points, sentences, analysis, curves and convergence check."""
    return {
        "sizes": sizes,
        "fractions": list(config.study.fractions),
        "seed": config.study.seed,
        "max_steps": config.study.max_steps,
        "patience_steps": config.study.patience_steps,
        "lrs": {size: chosen_lr(run, size) for size in sizes},
        "lr_candidates": list(config.study.lrs),
        "points": result.points,
        "missing": result.missing,
        "stale": result.stale,
        "sentences": result.sentences,
        "analysis": result.analysis,
        "curves": curves,
        "convergence_check": checks,
        "train_seconds": sum(p["train_seconds"] for p in result.points),  # epochs only: no validation, no probes
    }


def _write_table(run: RunDir, finished: list[dict[str, Any]]) -> None:
    """The points as CSV, one row each: the numbers a spreadsheet needs, no curves or sentences."""
    rows = [
        {
            "point": p["index"],
            "size": p["size"],
            "data": p["label"],
            "train_records": p["train_records"],
            "verdict_train_records": p["verdict_train_records"],
            "parameters": p["parameters"],
            "lr": p["lr"],
            "steps": p["steps"],
            "steps_to_best": p["steps_to_best"],
            "max_steps": p["max_steps"],
            "converged": p["converged"],
            "train_seconds": p["train_seconds"],
            **{f"model_{k}": p["model"][k] for k in SCORES},
            **{f"probe_{k}": p["probe"][k] for k in SCORES},
        }
        for p in finished
    ]
    with atomic_open(run.study_table, encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def format_study(result: StudyResult) -> str:
    """The table and the sentences, for the terminal."""
    head = (
        f"{'size':<7}{'data':>10}{'records':>9}{'params':>12}{'lr':>8}{'best':>7}{'steps':>7}{'conv':>5}{'seconds':>9}"
    )
    head += "".join(f"{name[:14]:>16}" for name in SCORES)
    lines = [head + "   (model / probe)"]
    for p in result.points:
        cells = "".join(f"{_pair(p, k):>16}" for k in SCORES)
        lines.append(
            f"{p['size']:<7}{p['label']:>10}{p['train_records']:>9,}{p['parameters']:>12,}{p['lr']:>8.0e}"
            f"{p['steps_to_best']:>7,}{p['steps']:>7,}{'yes' if p['converged'] else 'NO':>5}"
            f"{p['train_seconds']:>9.0f}{cells}"
        )
    return "\n".join(lines + [""] + result.sentences)


def _pair(point: dict[str, Any], metric: str) -> str:
    model, probe = point["model"][metric], point["probe"][metric]
    return "—" if model is None else f"{model:.3f}/{probe:.3f}" if probe is not None else f"{model:.3f}/—"
