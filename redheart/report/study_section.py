"""The report's "Learning curves" section, from RunDir.study/results.json (written by `redheart study`)."""

from __future__ import annotations

from redheart.atomic import read_json
from redheart.report.build import Section, Table, _Context, fmt, fmt_lr
from redheart.study.points import SCORES

_COLUMNS = {"emotion_accuracy": "emotion acc.", "emotion_macro_f1": "emotion F1", "verdict_macro_f1": "verdict F1",
            "verdict_cross_entropy": "verdict CE", "regression_mae": "regression MAE"}


def study_section(ctx: _Context) -> Section:
    run = ctx.run
    path = run.study / "results.json"
    results = read_json(path)
    section = Section("Learning curves", [ctx.rel(path)])
    points = results["points"]
    lrs = sorted({p["lr"] for p in points})
    section.paragraphs.append(
        f"Each point trains the run's recipe at learning rate {', '.join(fmt_lr(lr) for lr in lrs)} with one size "
        f"preset's model on a nested subset of the training records (subset seed {fmt(results['seed'])}), in one "
        f"cosine cycle of as many optimizer steps as {fmt(results['epochs'])} epochs of all the records take (a "
        f"smaller subset is seen more often), and is scored on the validation split only (the test split is never "
        f"read); the linear probe is fitted on the same subset. These are short runs beside the main run's 60 "
        f"epochs. Validation is the same {fmt(points[0]['val_records'])} records at every point. "
        f"Training time of all points (their epochs, without validation and the probes): "
        f"{fmt(results['train_seconds'] / 60, 1)} min."
    )
    section.paragraphs += results["sentences"]
    rows = [[p["size"], p["label"], fmt(p["train_records"]), fmt(p["parameters"]), fmt(p["epochs"]),
             fmt(p["train_seconds"], 0),
             *(f"{fmt(p['model'][k])} / {fmt(p['probe'][k])}" for k in SCORES)] for p in points]
    section.tables.append(Table("Learning curves on validation: model / linear probe on the same training records",
                                ["size", "data", "records", "parameters", "epochs", "seconds",
                                 *(_COLUMNS[k] for k in SCORES)], rows, "learning_curves"))
    for metric in SCORES:
        ctx.image(section, run.study / f"curve_{metric}.png", f"study_{metric}.png",
                  f"{_COLUMNS[metric]} on validation against training records (log scale): a line per model size, "
                  f"the linear probe dashed")
    return section
