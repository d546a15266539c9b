"""The Learning curves section, from RunDir.study_results (written by `redheart study`)."""

from __future__ import annotations

from typing import Any

from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt, fmt_ci, fmt_lr
from redheart.scoring.metrics import METRICS
from redheart.study.points import SCORES


def build(ctx: Context, title: str) -> Section:
    results = read_json(ctx.run.study_results)
    section = Section(title, [ctx.rel(ctx.run.study_results)])
    section.paragraphs.append(_method(results))
    section.paragraphs += results["sentences"]
    section.tables.append(_points_table(results["points"]))
    curves = results.get("curves", {})
    if curves:
        section.tables.append(_fit_table(curves))
        section.tables.append(_prediction_table(curves))
    for metric in SCORES:
        ctx.image(
            section,
            ctx.run.study_curve(metric),
            ctx.run.report_study_curve(metric),
            f"{METRICS[metric].label} on validation against training records (log scale): a line per model size, "
            f"the linear probe dashed, the fitted curve thin (dotted beyond the data), the full model's prediction",
        )
    return section


def _method(results: dict[str, Any]) -> str:
    """How a point is trained and scored, with the study's settings."""
    rates = ", ".join(f"{size} {fmt_lr(lr)}" for size, lr in results["lrs"].items())
    return (
        f"Each point trains the run's recipe with one size preset's model on a nested subset of the training records "
        f"(subset seed {fmt(results['seed'])}) at its size's learning rate, chosen by a short sweep of "
        f"{', '.join(fmt_lr(lr) for lr in results['lr_candidates'])} ({rates}). A point trains until its "
        f"validation loss has not improved for {fmt(results['patience_steps'])} optimizer steps, at most "
        f"{fmt(results['max_steps'])} steps (the step cap), and is scored at its best epoch on the validation split "
        f"only (the test split is never read); the linear probe is fitted on the same subset. Validation is the "
        f"same {fmt(results['points'][0]['val_records'])} records at every point. Training time of all points (their "
        f"epochs, without validation and the probes): {fmt(results['train_seconds'] / 60, 1)} min."
    )


def _points_table(points: list[dict[str, Any]]) -> Table:
    rows = [
        [
            p["size"],
            p["label"],
            fmt(p["train_records"]),
            fmt(p["parameters"]),
            fmt_lr(p["lr"]),
            fmt(p["steps_to_best"]),
            fmt(p["steps"]),
            fmt(bool(p["converged"])),
            *(f"{fmt(p['model'][k])} / {fmt(p['probe'][k])}" for k in SCORES),
        ]
        for p in points
    ]
    return Table(
        "Learning curves on validation: model / linear probe on the same training records",
        [
            "size",
            "data",
            "records",
            "parameters",
            "lr",
            "steps to best",
            "steps",
            "converged",
            *(METRICS[k].label for k in SCORES),
        ],
        rows,
        "learning_curves",
    )


def _curve_name(metric: str) -> str:
    """A curve's name: the fitted quantity falls with more data, so a higher-is-better metric is fitted as 1 - it."""
    return f"1 - {METRICS[metric].label}" if METRICS[metric].higher_is_better else METRICS[metric].label


def _fit_table(curves: dict[str, dict[str, Any]]) -> Table:
    """Each curve's fitted parameters and its held-out check."""
    rows = []
    for metric, entry in curves.items():
        table = entry["fit"]
        if table["identifiable"]:
            cells = [
                "not identifiable" if v["value"] is None else fmt_ci(v["value"], v["interval"])
                for v in table["parameters"].values()
            ]
        else:
            cells = ["not identifiable"] * 5
        rows.append([_curve_name(metric), *cells, _held_out_cell(entry["held_out"])])
    return Table(
        "Fitted curve E + A (N/N0)^-alpha + B (D/D0)^-beta per metric (95 % bootstrap intervals) and the "
        "held-out check: fitted without the largest studied size, its points against their intervals",
        ["metric", "E", "A", "alpha", "B", "beta", "held-out check"],
        rows,
        "learning_curve_fit",
    )


def _held_out_cell(held: dict[str, Any]) -> str:
    if held["reason"] is not None:
        return "no check"
    inside = sum(c["inside"] for c in held["points"])
    worst = max(held["points"], key=lambda c: abs(c["error"]))
    return (
        f"{held['size']}: {inside} of {len(held['points'])} points inside; largest error {fmt(worst['error'])} "
        f"(interval {fmt(worst['interval'][0])} to {fmt(worst['interval'][1])})"
    )


def _prediction_table(curves: dict[str, dict[str, Any]]) -> Table:
    """The full model's predicted numbers at 1x, 2x and 4x the bundled data, and the gain over the largest size."""
    rows = []
    for metric, entry in curves.items():
        pred = entry["prediction"]
        if pred["reason"] is None:
            rows.append(
                [
                    _curve_name(metric),
                    *(fmt_ci(v["value"], v["interval"]) for v in pred["at"].values()),
                    fmt_ci(pred["gain"], pred["gain_interval"]),
                    fmt(pred["records_for_gain"], 0) if pred["records_for_gain"] is not None else "none",
                ]
            )
        else:
            rows.append([_curve_name(metric), *(["not identifiable"] * 4), "—"])
    predicted = [e["prediction"] for e in curves.values() if e["prediction"]["reason"] is None]
    d0 = predicted[0]["records"] if predicted else None
    reference = predicted[0]["reference"] if predicted else ""
    return Table(
        "Prediction for the full model by the fitted curve (95 % intervals) at the bundled data"
        + (f" ({fmt(d0, 0)} records)" if d0 is not None else "")
        + f", 2x and 4x of it; the gain over {reference or 'the largest studied size'} at the bundled data, "
        "and the records that size would need for the same gain",
        ["metric", "full, 1x data", "full, 2x data", "full, 4x data", "gain over largest", "records for it"],
        rows,
        "learning_curve_prediction",
    )
