"""The results section: every candidate and baseline on the test split with intervals, the decision rule
and the paired difference to the linear probe; validation numbers alone while the test split is unread or
its results are stale."""

from __future__ import annotations

from typing import Any

from redheart.architecture import VERDICTS
from redheart.core.atomic import read_json
from redheart.report.context import Context
from redheart.report.document import Section, Table
from redheart.report.numbers import fmt, fmt_ci
from redheart.scoring.metrics import COMPARED, HEADLINE, METRICS, direction_words


def build(ctx: Context, title: str) -> Section:
    run = ctx.run
    test_path, candidates_path = run.test_results, run.crossover_candidates
    stale = ctx.stale_test_results if test_path.exists() else None
    if test_path.exists() and stale is None:
        results = read_json(test_path)
        section = Section(title, [ctx.rel(test_path)])
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
                *(fmt_ci(e["headline"].get(k), e.get("intervals", {}).get(k)) for k in (m.key for m in HEADLINE)),
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
                ["model", "val loss", *(m.label for m in HEADLINE)],
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
        [c["name"], fmt(c["val"]["loss"]), *(fmt(c["val"]["headline"].get(k)) for k in (m.key for m in HEADLINE))]
        for c in plan["candidates"]
    ]
    section.tables.append(
        Table("Candidates on validation", ["model", "val loss", *(m.label for m in HEADLINE)], rows, "training_results")
    )
    section.paragraphs += [f"Final model: {plan['final_model']}.", plan["conclusion"]]
    return section


def _difference(section: Section, results: dict[str, Any]) -> None:
    """The verdict decision rule beside argmax, and final model - linear probe with paired intervals."""
    from redheart.evaluate.final import PROBE

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
            METRICS[key].label,
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
            f"the same resampled rows in every resample); {direction_words(COMPARED)}",
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
