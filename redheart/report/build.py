"""`redheart report --run`: the run's results as one self-contained folder, RunDir.report/.

    index.html, report.md   every section: its tables, its plots (copied into img/) and its source files
    tables/*.tex            LaTeX tables (data statistics, architecture, sweet spots, training results, calibration)
    parameters.json         the parameter table, computed from the run's config on the meta device

Every number is read from a file of the run (each section names its sources) and formatted by `fmt`; a
section whose inputs are missing says so instead of failing, so a partial run still gets a report.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redheart.architecture import VERDICTS
from redheart.config import ModelConfig, load_config
from redheart.core.atomic import atomic_open, read_json, write_json, write_with
from redheart.core.rundir import RunDir
from redheart.evaluate.calibration import CALIBRATORS_FILE, TEST_REPORT_FILE
from redheart.model.model import parameter_table
from redheart.report.document import Section, Table
from redheart.report.html import render_html, render_markdown
from redheart.report.latex import write_latex_tables
from redheart.report.training_plot import plot_training
from redheart.scoring.metrics import HEADLINE_LABELS
from redheart.study.points import SCORES
from redheart.train.sweep.score import format_lr
from redheart.train.telemetry.records import read_metrics


def fmt(value: Any, digits: int = 4) -> str:
    """The one number format of every table: ints with separators, floats with `digits` decimals, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def fmt_lr(value: float | None) -> str:
    """A learning rate as the config and the sweep write it (format_lr), None as a dash."""
    return fmt(value) if value is None else format_lr(value)


def fmt_ci(value: float | None, interval: list | None) -> str:
    lo, hi = interval or (None, None)
    return fmt(value) if lo is None else f"{fmt(value)} [{fmt(lo, 3)}, {fmt(hi, 3)}]"


class _Context:
    """The run, the report folder and the images copied into it."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.out = run.report
        (self.out / "img").mkdir(parents=True, exist_ok=True)

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run.root))

    def image(self, section: Section, path: Path, name: str, caption: str) -> None:
        if not path.exists():
            section.missing.append(f"{self.rel(path)} not found")
            return
        target = self.out / "img" / name
        write_with(target, lambda tmp: shutil.copyfile(path, tmp))
        section.images.append((f"img/{name}", caption))


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "; ".join(f"{k}: {v}" for k, v in value.items())
    return fmt(value)


def _data(ctx: _Context) -> Section:
    run = ctx.run
    section = Section("Data", [ctx.rel(run.data_stats)])
    stats = read_json(run.data_stats)
    section.paragraphs.append(
        f"{fmt(stats['records_read'])} records read, {fmt(stats['rejected'])} rejected, "
        f"{fmt(stats['duplicates_removed'])} near-duplicates removed, {fmt(stats['clean_records'])} clean records. "
        f"Split stratified by {_describe(stats.get('stratified_by'))}."
    )
    closeness = stats.get("leakage")
    if closeness:
        # Counts scored only on proposed pairs are lower bounds (older runs: every count came from LSH proposals).
        bounds = closeness.get("lower_bounds", list(closeness["pairs"]))
        counts = "; ".join(
            f"{name}: {'at least ' if name in bounds else ''}{fmt(count)}" for name, count in closeness["pairs"].items()
        )
        section.paragraphs.append(
            f"Leakage, {closeness['compared']} ({closeness['proposed_by']}), pairs at each threshold: {counts}. "
            f"Texts at fuzz.ratio >= the dedup threshold on the text alone: {fmt(stats['leaks'])}, zero by "
            "construction of the near-duplicate removal, so the looser thresholds are the finding."
        )
    else:
        section.missing.append(
            "leakage at looser thresholds not measured (made by redheart prepare); "
            f"at the dedup threshold: {fmt(stats['leaks'])}"
        )
    labels = [v for v in (*VERDICTS, "none") if any(v in counts for counts in stats["label_distribution"].values())]
    rows = []
    for split, size in stats["split_sizes"].items():
        counts, length, emotion = (
            stats["label_distribution"].get(split, {}),
            stats["text_length"].get(split, {}),
            stats["emotion_argmax"].get(split, {}),
        )
        rows.append(
            [
                split,
                fmt(size),
                *(fmt(counts.get(v, 0)) for v in labels),
                fmt(length.get("mean"), 1),
                fmt(length.get("median"), 1),
                f"{emotion.get('majority') or '—'} {fmt(emotion.get('majority_share'), 3)}",
            ]
        )
    section.tables.append(
        Table(
            "Records per split: verdict counts, text length (characters) and the most frequent "
            "first-maximum emotion's share "
            "(targets can tie for the top emotion and accuracy counts any tied class, so the class-prior "
            "accuracy in the results table is higher than this share)",
            ["split", "records", *labels, "mean length", "median length", "majority emotion"],
            rows,
            "data_statistics",
        )
    )
    sources = stats.get("sources", {})
    if len(sources) > 1:
        extra = [name for name, entry in sources.items() if entry["role"] == "extra"]
        section.paragraphs.append(
            "Validation and test are drawn from the fully labelled source(s) only"
            + (
                f"; {', '.join(extra)} joined the training split alone, so every validation and test number here is "
                "comparable with a run without it."
                if extra
                else "."
            )
        )
        section.tables.append(
            Table(
                "Records per source (targets a source lacks stay masked, never filled in)",
                ["source", "role", "clean records", "train", "val", "test"],
                [
                    [name, e["role"], *(fmt(e[k]) for k in ("clean_records", "train", "val", "test"))]
                    for name, e in sources.items()
                ],
                "data_sources",
            )
        )
    return section


def _model(ctx: _Context) -> Section:
    run = ctx.run
    if run.config.exists():
        config = load_config(run.config)
        model, dim, segments, source = config.model, config.encoder.dim, config.encoder.max_segments, run.config
    else:
        info = read_json(run.final_model_config)
        model, dim, segments, source = (
            ModelConfig(**info["model"]),
            info["input_dim"],
            info["max_segments"],
            run.final_model_config,
        )
    rows = parameter_table(model, dim, segments)
    write_json(
        ctx.out / "parameters.json",
        {
            "source": ctx.rel(source),
            "input_dim": dim,
            "max_segments": segments,
            "modules": rows,
            "total": sum(r["parameters"] for r in rows),
            "budget": sum(r["budget"] for r in rows),
        },
    )
    section = Section("Model", [ctx.rel(source), "report/parameters.json"])
    section.paragraphs.append(
        f"Parameters counted on the meta device from the model config in {ctx.rel(source)} (no weights allocated)."
    )
    body = [
        [r["module"], r["group"], fmt(r["width"]), fmt(r["parameters"]), fmt(r["budget"]), fmt(r["ratio"], 3)]
        for r in rows
    ]
    total, budget = sum(r["parameters"] for r in rows), sum(r["budget"] for r in rows)
    body.append(["total", "", "", fmt(total), fmt(budget), fmt(total / budget, 3)])
    section.tables.append(
        Table(
            "Parameters per module against its budget",
            ["module", "group", "width", "parameters", "budget", "ratio"],
            body,
            "architecture",
        )
    )
    return section


def _sweep(ctx: _Context) -> Section:
    run = ctx.run
    results = read_json(run.sweep_results)
    section = Section("Learning-rate sweep", [ctx.rel(run.sweep_results)])
    section.paragraphs.append(f"Chosen rate {fmt_lr(results['choice']['lr'])}: {results['choice']['reason']}")
    rows = [
        [
            fmt_lr(c["lr"]),
            fmt(c["trials"]),
            fmt(c["diverged"]),
            *(fmt(c["components"].get(k)) for k in ("val_loss", "instability", "inefficiency", "overfit_gap")),
            fmt(c["total"], 3),
        ]
        for c in results["candidates"]
    ]
    weights = ", ".join(f"{k} {fmt(v, 2)}" for k, v in results["weights"].items())
    section.tables.append(
        Table(
            f"Sweep candidates (weights: {weights}; lower score is better)",
            ["lr", "trials", "diverged", "val loss", "instability", "inefficiency", "overfit gap", "score"],
            rows,
        )
    )
    ctx.image(section, run.sweep_curves, "sweep_curves.png", "training and validation loss per epoch of every trial")
    return section


def _training(ctx: _Context) -> Section:
    run = ctx.run
    records = read_metrics(run.metrics_log)
    if not records:
        raise FileNotFoundError(f"{ctx.rel(run.metrics_log)} not found or empty")
    section = Section("Training and sweet spots", [ctx.rel(run.metrics_log)])
    rows = []
    for r in records:
        head = r["val"].get("headline", {})
        rows.append(
            [
                fmt(r["epoch"]),
                fmt_lr(r["lr"]),
                fmt(r["train_loss"].get("total")),
                fmt(sum(r["val"]["loss"].values())),
                *(fmt(head.get(k)) for k in HEADLINE_LABELS),
            ]
        )
    section.tables.append(
        Table(
            "Per epoch: training objective, summed validation loss and the fused validation headline",
            ["epoch", "lr", "train objective", "val loss", *HEADLINE_LABELS.values()],
            rows,
        )
    )
    analysis_json = run.analysis_results
    if analysis_json.exists():
        section.sources.append(ctx.rel(analysis_json))
        analysis = read_json(analysis_json)
        spots = [[g, fmt(s["sweet_spot"]), fmt(s["onset"]), s["reason"]] for g, s in analysis["groups"].items()]
        section.tables.append(
            Table(
                f"Sweet spot per module group (smoothing {analysis['smoothing']}, window "
                f"{analysis['window']}; onset: {analysis['onset_run']} widenings in a row)",
                ["group", "sweet spot", "onset", "reason"],
                spots,
                "sweet_spots",
            )
        )
        ctx.image(
            section,
            run.analysis_curves,
            "analysis_curves.png",
            "train/validation loss per group, sweet spot (star) and over-fitting onset (dashed)",
        )
    else:
        section.missing.append(f"{ctx.rel(analysis_json)} not found: no sweet-spot analysis yet")
        plot_training(records, ctx.out / "img" / "training_curves.png")
        section.images.append(
            (
                "img/training_curves.png",
                f"losses and validation headline per epoch, drawn from {ctx.rel(run.metrics_log)}",
            )
        )
    return section


def _results(ctx: _Context) -> Section:
    run = ctx.run
    test_path, candidates_path = run.test_results, run.crossover_candidates
    stale = _stale_test_results(run) if test_path.exists() else None
    if test_path.exists() and stale is None:
        results = read_json(test_path)
        section = Section("Crossover and test results", [ctx.rel(test_path)])
        named = dict(results["baselines"])
        # The training mean is both the class prior (distributions) and the mean predictor (regression).
        if named.get("class_prior", {}).get("headline") == named.get("mean_predictor", {}).get("headline"):
            named = {"class_prior / mean_predictor": named.pop("class_prior"), **named}
            named.pop("mean_predictor")
        baselines = [(f"baseline: {n.replace('_', ' ')}", e, None) for n, e in named.items()]
        final = results["final_model"]
        models = [
            (n + (" (final model)" if n == final else ""), e, e.get("val", {}).get("loss"))
            for n, e in results["models"].items()
        ]
        rows = [
            [
                name,
                fmt(val_loss),
                *(fmt_ci(e["headline"].get(k), e.get("intervals", {}).get(k)) for k in HEADLINE_LABELS),
            ]
            for name, e, val_loss in baselines + models
        ]
        reads = results.get("reads") or [{"read": 1, "at": results.get("evaluated_at"), "why": "first read"}]
        read_note = "read once" if len(reads) == 1 else f"read {len(reads)} times, the last read shown"
        level = fmt(100 * results["bootstrap"]["level"], 0)
        section.tables.append(
            Table(
                f"Test split (n = {fmt(results['n'])}, {read_note}), {level}% bootstrap intervals "
                f"({fmt(results['bootstrap']['samples'])} resamples); every choice made on validation",
                ["model", "val loss", *HEADLINE_LABELS.values()],
                rows,
                "training_results",
            )
        )
        section.paragraphs += [
            f"Final model (best single network on validation): {results['final_model']}.",
            results["validation_conclusion"],
            results["test_conclusion"],
        ]
        _difference(section, results)
        section.paragraphs.append(
            f"Reads of the test split: {fmt(len(reads))} ("
            + "; ".join(f"read {r['read']} at {r['at']}: {r['why']}" for r in reads)
            + ")."
        )
        return section
    plan = read_json(candidates_path)
    section = Section("Crossover (validation only)", [ctx.rel(candidates_path)])
    if stale is not None:
        section.missing.append(f"{ctx.rel(test_path)} is stale, validation numbers only: {stale}")
    else:
        section.missing.append(
            f"{ctx.rel(test_path)} not found: the test split has not been evaluated; validation numbers only"
        )
    rows = [
        [c["name"], fmt(c["val"]["loss"]), *(fmt(c["val"]["headline"].get(k)) for k in HEADLINE_LABELS)]
        for c in plan["candidates"]
    ]
    section.tables.append(
        Table("Candidates on validation", ["model", "val loss", *HEADLINE_LABELS.values()], rows, "training_results")
    )
    section.paragraphs += [f"Final model: {plan['final_model']}.", plan["conclusion"]]
    return section


def _difference(section: Section, results: dict[str, Any]) -> None:
    """The verdict decision rule beside argmax, and final model - linear probe with paired intervals."""
    from redheart.evaluate.final import DIFFERENCE_LABELS, PROBE

    if "final_vs_probe" not in results:
        return
    rows = []
    final = results["models"][results["final_model"]]
    for name, entry in (("final model", final), ("linear probe", results["baselines"][PROBE])):
        rule = entry["decision_rule"]
        argmax_ci = entry.get("intervals", {}).get("verdict_macro_f1")
        if "argmax_macro_f1" in rule:  # argmax of the distribution the rule weighs (for the final model: as served)
            argmax, argmax_ci = rule["argmax_macro_f1"], None
        else:
            argmax = entry["headline"]["verdict_macro_f1"]
        rows.append(
            [
                f"{name} ({rule.get('distribution', 'uncalibrated')})",
                fmt_ci(argmax, argmax_ci),
                fmt_ci(rule["verdict_macro_f1"], rule["intervals"]["verdict_macro_f1"]),
                fmt_ci(rule["verdict_accuracy"], rule["intervals"]["verdict_accuracy"]),
                ", ".join(fmt(w, 2) for w in rule["weights"]),
            ]
        )
    section.tables.append(
        Table(
            f"Verdict on test: argmax against the decision rule (class weights {', '.join(VERDICTS)} on the "
            f"predicted distribution, fitted on validation only, n = {fmt(results['decision_rule']['n_val'])}); the "
            "final model's rule weighs the distribution `redheart predict` serves (calibrated), so predict's "
            "verdict labels score the rule's F1; the distribution, and so cross-entropy and calibration, is unchanged",
            ["model", "verdict F1 (argmax)", "verdict F1 (rule)", "verdict acc. (rule)", "class weights"],
            rows,
            "decision_rule",
        )
    )
    rows = [
        [
            DIFFERENCE_LABELS[key],
            fmt(e["final"]),
            fmt(e["probe"]),
            fmt(e["difference"]),
            "—" if e["interval"][0] is None else f"[{fmt(e['interval'][0])}, {fmt(e['interval'][1])}]",
        ]
        for key, e in results["final_vs_probe"].items()
        if e["difference"] is not None
    ]
    section.tables.append(
        Table(
            "Final model - linear probe on test: paired bootstrap 95% interval of the difference (both scored on "
            "the same resampled rows in every resample); CE and MAE: lower is better",
            ["metric", "final model", "linear probe", "difference", "95% interval"],
            rows,
            "final_vs_probe",
        )
    )
    if results.get("verdict_sources"):
        shares = ", ".join(f"{k} {fmt(v, 2)}" for k, v in results["verdict_sources"].items())
        section.paragraphs.append(
            "The verdict's two sources are trained by different objectives (verdict_head: the Dirichlet-multinomial "
            "likelihood of the votes, unless the config says soft_ce; phase2_community: soft cross-entropy); the final "
            f"model's fusion, fitted on validation, weighs them {shares}."
        )
    section.paragraphs.append(results["final_vs_probe_conclusion"])


def _stale_test_results(run: RunDir) -> str | None:
    """Why the run's test results no longer describe its artefacts, or None when they do."""
    from redheart.evaluate.test_reads import StaleTestResults, check_fingerprint, fingerprint

    try:
        check_fingerprint(run, read_json(run.root / "test_results.json"), fingerprint(run))
    except (StaleTestResults, FileNotFoundError) as error:
        return str(error)
    return None


def _calibration(ctx: _Context) -> Section:
    run = ctx.run
    fitted = read_json(run.calibration / CALIBRATORS_FILE)
    section = Section("Calibration", [ctx.rel(run.calibration / CALIBRATORS_FILE)])
    for name, entry in fitted["targets"].items():
        cv = ", ".join(f"{m} {fmt(v)}" for m, v in entry["cv_nll"].items())
        section.paragraphs.append(
            f"{name}: {entry['method']} chosen on validation ({entry['reason']}). Cross-validated NLL: {cv or '—'}."
        )
    test_report = run.calibration / TEST_REPORT_FILE
    # The test report is written by the read of the test split; stale test results make it stale too.
    if test_report.exists() and (run.root / "test_results.json").exists() and _stale_test_results(run) is None:
        report, split = read_json(test_report), "test"
        section.sources.append(ctx.rel(test_report))
    else:
        section.missing.append(
            f"{ctx.rel(test_report)} not found: validation (out-of-fold) numbers shown instead of test"
        )
        report = {
            "targets": {
                n: {"n": e["n"], "method": e["method"], "methods": e["validation"]}
                for n, e in fitted["targets"].items()
                if e["validation"]
            }
        }
        split = "validation (out-of-fold)"
    rows = []
    for name, entry in report["targets"].items():
        if not entry.get("n"):
            continue
        methods = entry.get("methods") or {"none": entry["before"], entry["method"]: entry["after"]}
        for method, m in methods.items():
            label = ("uncalibrated" if method == "none" else method) + (
                " (default)" if method == entry["method"] else ""
            )
            rows.append(
                [name, label, split, fmt(m["n"]), *(fmt(m[k]) for k in ("ece", "mce", "nll", "brier", "accuracy"))]
            )
    section.tables.append(
        Table(
            f"Calibration of every method, {fitted['n_bins']}-bin top-label ECE (default: chosen on validation)",
            ["target", "method", "split", "n", "ECE", "MCE", "NLL", "Brier", "accuracy"],
            rows,
            "calibration",
        )
    )
    prefix = "reliability_test" if test_report.exists() else "reliability_val"
    for name in report["targets"]:
        if report["targets"][name].get("n"):
            ctx.image(
                section,
                run.calibration / f"{prefix}_{name}.png",
                f"{prefix}_{name}.png",
                f"reliability diagram of {name}, {split}",
            )
    return section


_STUDY_COLUMNS = {
    "emotion_accuracy": "emotion acc.",
    "emotion_macro_f1": "emotion F1",
    "emotion_kl": "emotion KL",
    "verdict_macro_f1": "verdict F1",
    "verdict_cross_entropy": "verdict CE",
    "regression_mae": "regression MAE",
}


def _study(ctx: _Context) -> Section:
    """The "Learning curves" section, from RunDir.study/results.json (written by `redheart study`)."""
    run = ctx.run
    path = run.study / "results.json"
    results = read_json(path)
    section = Section("Learning curves", [ctx.rel(path)])
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
                *(_STUDY_COLUMNS[k] for k in SCORES),
            ],
            rows,
            "learning_curves",
        )
    )
    curves = results.get("curves", {})
    fit_rows, prediction_rows = [], []
    for metric, entry in curves.items():
        table = entry["fit"]
        name = (
            _STUDY_COLUMNS[metric]
            if metric in ("emotion_kl", "verdict_cross_entropy", "regression_mae")
            else (f"1 - {_STUDY_COLUMNS[metric]}")
        )
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
            run.study / f"curve_{metric}.png",
            f"study_{metric}.png",
            f"{_STUDY_COLUMNS[metric]} on validation against training records (log scale): a line per model size, "
            f"the linear probe dashed, the fitted curve thin (dotted beyond the data), the full model's prediction",
        )
    return section


SECTIONS: list[tuple[str, Callable[[_Context], Section], str]] = [
    ("Data", _data, "redheart prepare"),
    ("Model", _model, "a run config (config.yaml) or a final model"),
    ("Learning-rate sweep", _sweep, "redheart sweep"),
    ("Training and sweet spots", _training, "redheart train"),
    ("Crossover and test results", _results, "redheart evaluate"),
    ("Calibration", _calibration, "the calibration phase"),
]
# Sections of phases outside the main job: shown only when the run has their file.
OPTIONAL_SECTIONS: list[tuple[str, Callable[[_Context], Section], str, Callable[[RunDir], Path]]] = [
    ("Learning curves", _study, "redheart study", lambda run: run.study / "results.json"),
]


def collect_sections(run: RunDir) -> list[Section]:
    """Every section; one whose inputs are missing or unreadable carries the reason instead of its content."""
    ctx = _Context(run)
    sections = []
    optional = [
        (title, build, producer) for title, build, producer, marker in OPTIONAL_SECTIONS if marker(run).exists()
    ]
    for title, build, producer in [*SECTIONS, *optional]:
        try:
            sections.append(build(ctx))
        except FileNotFoundError as error:
            name = Path(error.filename).relative_to(run.root) if error.filename else error
            sections.append(Section(title, [], missing=[f"not available: {name} not found (made by {producer})"]))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as error:
            sections.append(
                Section(
                    title, [], missing=[f"not available: its input could not be read ({type(error).__name__}: {error})"]
                )
            )
    return sections


def build_report(run: RunDir) -> Path:
    """Write index.html, report.md and tables/*.tex into RunDir.report; return the HTML page's path."""
    sections = collect_sections(run)
    title = f"Red Heart run report: {run.root.resolve().name}"
    with atomic_open(run.report / "index.html") as handle:
        handle.write(render_html(title, sections))
    with atomic_open(run.report / "report.md") as handle:
        handle.write(render_markdown(title, sections))
    write_latex_tables(sections, run.report / "tables")
    if (run.final_model / "config.json").exists():
        from redheart.evaluate.model_card import write_model_card

        write_model_card(run)
    return run.report / "index.html"
