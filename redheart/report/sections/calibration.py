"""The Calibration section: the method chosen per target, and every method's calibration on test (or on
validation, out of fold, before the test split is read)."""

from __future__ import annotations

from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    fitted = read_json(run.calibrators)
    section = Section(title, [ctx.rel(run.calibrators)])
    for name, entry in fitted["targets"].items():
        cv = ", ".join(f"{m} {fmt(v)}" for m, v in entry["cv_nll"].items())
        section.paragraphs.append(
            f"{name}: {entry['method']} chosen on validation ({entry['reason']}). Cross-validated NLL: {cv or '—'}."
        )
    test_report = run.calibration_report("test")
    # The test report is written by the read of the test split; stale test results make it stale too.
    if test_report.exists() and run.test_results.exists() and ctx.stale_test_results is None:
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
    plotted = "test" if test_report.exists() else "val"
    for name in report["targets"]:
        if report["targets"][name].get("n"):
            plot = run.reliability_plot(plotted, name)
            ctx.image(
                section,
                plot,
                run.report_images / plot.name,
                f"reliability diagram of {name}, {split}",
            )
    return section
