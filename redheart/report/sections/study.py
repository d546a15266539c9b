"""The Learning curves section, from RunDir.study_results (written by `redheart study`)."""

from __future__ import annotations

from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt, fmt_ci, fmt_lr
from redheart.scoring.metrics import METRICS
from redheart.study.points import SCORES


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    path = run.study_results
    results = read_json(path)
    section = Section(title, [ctx.rel(path)])
    points = results["points"]
    rates = ", ".join(f"{size} {fmt_lr(lr)}" for size, lr in results["lrs"].items())
    section.paragraphs.append(
        f"Each point trains the run's recipe with one size preset's model on a nested subset of the training records "
        f"(subset seed {fmt(results['seed'])}) at its size's learning rate, chosen by a short sweep of "
        f"{', '.join(fmt_lr(lr) for lr in results['lr_candidates'])} ({rates}). A point trains until its "
        f"validation loss has not improved for {fmt(results['patience_steps'])} optimizer steps, at most "
        f"{fmt(results['max_steps'])} steps (the step cap), and is scored at its best epoch on the validation split "
        f"only (the test split is never read); the linear probe is fitted on the same subset. Validation is the "
        f"same {fmt(points[0]['val_records'])} records at every point. Training time of all points (their epochs, "
        f"without validation and the probes): {fmt(results['train_seconds'] / 60, 1)} min."
    )
    section.paragraphs += results["sentences"]
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
    section.tables.append(
        Table(
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
    )
    curves = results.get("curves", {})
    fit_rows, prediction_rows = [], []
    for metric, entry in curves.items():
        table = entry["fit"]
        name = f"1 - {METRICS[metric].label}" if METRICS[metric].higher_is_better else METRICS[metric].label
        if table["identifiable"]:
            cells = [
                "not identifiable" if v["value"] is None else fmt_ci(v["value"], v["interval"])
                for v in table["parameters"].values()
            ]
        else:
            cells = ["not identifiable"] * 5
        held = entry["held_out"]
        if held["reason"] is None:
            inside = sum(c["inside"] for c in held["points"])
            worst = max(held["points"], key=lambda c: abs(c["error"]))
            held_cell = (
                f"{held['size']}: {inside} of {len(held['points'])} points inside; largest error {fmt(worst['error'])} "
                f"(interval {fmt(worst['interval'][0])} to {fmt(worst['interval'][1])})"
            )
        else:
            held_cell = "no check"
        fit_rows.append([name, *cells, held_cell])
        pred = entry["prediction"]
        if pred["reason"] is None:
            prediction_rows.append(
                [
                    name,
                    *(fmt_ci(v["value"], v["interval"]) for v in pred["at"].values()),
                    fmt_ci(pred["gain"], pred["gain_interval"]),
                    fmt(pred["records_for_gain"], 0) if pred["records_for_gain"] is not None else "none",
                ]
            )
        else:
            prediction_rows.append([name, *(["not identifiable"] * 4), "—"])
    if fit_rows:
        section.tables.append(
            Table(
                "Fitted curve E + A (N/N0)^-alpha + B (D/D0)^-beta per metric (95 % bootstrap intervals) and the "
                "held-out check: fitted without the largest studied size, its points against their intervals",
                ["metric", "E", "A", "alpha", "B", "beta", "held-out check"],
                fit_rows,
                "learning_curve_fit",
            )
        )
    if prediction_rows:
        d0 = next((e["prediction"]["records"] for e in curves.values() if e["prediction"]["reason"] is None), None)
        reference = next(
            (e["prediction"]["reference"] for e in curves.values() if e["prediction"]["reason"] is None), ""
        )
        section.tables.append(
            Table(
                "Prediction for the full model by the fitted curve (95 % intervals) at the bundled data"
                + (f" ({fmt(d0, 0)} records)" if d0 is not None else "")
                + f", 2x and 4x of it; the gain over {reference or 'the largest studied size'} at the bundled data, "
                "and the records that size would need for the same gain",
                ["metric", "full, 1x data", "full, 2x data", "full, 4x data", "gain over largest", "records for it"],
                prediction_rows,
                "learning_curve_prediction",
            )
        )
    for metric in SCORES:
        ctx.image(
            section,
            run.study_curve(metric),
            run.report_study_curve(metric),
            f"{METRICS[metric].label} on validation against training records (log scale): a line per model size, "
            f"the linear probe dashed, the fitted curve thin (dotted beyond the data), the full model's prediction",
        )
    return section
