"""The model card beside the final model: final_model/README.md, in the shape model hubs use.

Every fact comes from a file of the run: the final model's config.json (what it is, how it was chosen),
config.yaml (the training recipe), data/stats.json (the data and its closeness across splits),
calibration/calibrators.json (the calibration chosen on validation), final_model/decision_rule.json (the
verdict label predict gives), the resume state (the learning rate training ran at, and its source) and
test_results.json (test metrics beside the baselines with 95% intervals, and how often the test split was
read). Test numbers are shown only while they measured this final model; otherwise the card says which
command measures it. The card
is documentation: it is not in the folder's checksum manifest and is rewritten whenever its sources change;
card.json holds the same facts as data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redheart.architecture import BENTHAM_KEYS, EMOTIONS, SURD_KEYS, VERDICTS
from redheart.core.atomic import atomic_open, read_json, write_json
from redheart.core.rundir import RunDir
from redheart.data.schema import bundled_data_path
from redheart.scoring.metrics import HEADLINE, Metric

# Provenance of the data set shipped in the package; a run on other data states only its path.
BUNDLED_DATA = (
    "AllenAI Scruples anecdotes (public Reddit posts; texts, titles and community verdicts), published "
    "under Apache-2.0; emotions, regret, Bentham and SURD targets are one LLM labelling of each text"
)


def _card_label(metric: Metric) -> str:
    """The metric's name with its note and, when lower is better, that (the card's readers meet it alone)."""
    notes = [note for note in (metric.note, "" if metric.higher_is_better else "lower is better") if note]
    return metric.words + (f" ({', '.join(notes)})" if notes else "")


def _number(value: float | None, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _with_interval(entry: dict[str, Any], key: str) -> str:
    value = entry["headline"].get(key)
    interval = entry.get("intervals", {}).get(key)
    if value is None or not interval:
        return _number(value)
    return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]"


def _against_baselines(results: dict[str, Any]) -> str:
    """Per headline metric: the final model beside the best baseline, and whether its interval clears it."""
    final = results["models"][results["final_model"]]
    parts = []
    for metric in HEADLINE:
        key, lower_is_better = metric.key, not metric.higher_is_better
        values = {n: e["headline"][key] for n, e in results["baselines"].items() if e["headline"].get(key) is not None}
        value, interval = final["headline"].get(key), final.get("intervals", {}).get(key)
        if not values or value is None:
            continue
        best = (min if lower_is_better else max)(values, key=values.__getitem__)
        if interval and (interval[1] < values[best] if lower_is_better else interval[0] > values[best]):
            word = "better, its interval clear of it"
        elif (value < values[best]) if lower_is_better else (value > values[best]):
            word = "better, within the interval"
        else:
            word = "not better"
        parts.append(f"{metric.words} {value:.4f} vs {best.replace('_', ' ')} {values[best]:.4f} ({word})")
    return "; ".join(parts)


def _current_results(run: RunDir) -> tuple[dict[str, Any] | None, str]:
    from redheart.evaluate.test_reads import StaleTestResults, check_fingerprint, fingerprint

    path = run.test_results
    if not path.exists():
        return None, f"not measured yet: run `redheart evaluate --run {run.root}`"
    results = read_json(path)
    try:
        check_fingerprint(run, results, fingerprint(run))
    except (StaleTestResults, FileNotFoundError) as error:
        return None, f"the test results on disk measured other artefacts ({error})"
    return results, ""


# The run's test results while they measured this final model, else None and why not (_current_results).
Current = tuple[dict[str, Any] | None, str]


def model_card(run: RunDir, current: Current) -> str:
    """The card's Markdown, from the run's files: one block per section, in the order model hubs show them."""
    info = read_json(run.model_files.config)
    candidate = info.get("info", {}).get("candidate", {})
    results, why_not = current
    lines = _front(info, candidate)
    lines += ["## Data", "", *_data(run)]
    lines += ["", "## Training recipe", "", *_recipe(run, info, candidate)]
    lines += ["", "## Test metrics", "", *_test_metrics(results, why_not)]
    lines += ["", "## Calibration", "", *_calibration(run, results)]
    lines += ["", "## Which verdict label to use", "", *verdict_usage(run, results)]
    lines += ["", "## Known limitations", "", *_limitations(run, results)]
    lines += ["", "## How to use", "", *_usage(run)]
    return "\n".join(lines) + "\n"


def _front(info: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    return [
        "---",
        "license: apache-2.0",
        "language: en",
        "library_name: redheart",
        "tags: [text-classification, multi-task, emotion, moral-judgement, scruples]",
        "---",
        "",
        f"# Red Heart model ({info['preset']} preset): {candidate.get('name', 'final model')}",
        "",
        "## What it predicts",
        "",
        "From a first-person account of a social situation (title and text), one forward pass gives:",
        f"- emotions: a distribution over {', '.join(EMOTIONS)};",
        f"- the community's moral verdict: a distribution over {', '.join(VERDICTS)};",
        f"- regret (one score), Bentham scores ({', '.join(BENTHAM_KEYS)}) and SURD metrics ({', '.join(SURD_KEYS)}).",
        "",
    ]


def _data(run: RunDir) -> list[str]:
    lines: list[str] = []
    stats = read_json(run.data_stats) if run.data_stats.exists() else None
    if stats:
        bundled = Path(stats["data_path"]).name == bundled_data_path().name
        sizes = ", ".join(f"{name} {count}" for name, count in stats["split_sizes"].items())
        lines += [
            f"- source: `{Path(stats['data_path']).name}`"
            + (f": {BUNDLED_DATA}." if bundled else " (licence: as its owner gives it; not recorded in the run)."),
            f"- {stats['records_read']} records read, {stats['rejected']} rejected, "
            f"{stats['duplicates_removed']} near-duplicates removed; split {sizes}.",
        ]
        if stats.get("leakage"):
            bounds = stats["leakage"].get("lower_bounds", list(stats["leakage"]["pairs"]))
            counts = "; ".join(
                f"{k}: {'at least ' if k in bounds else ''}{v}" for k, v in stats["leakage"]["pairs"].items()
            )
            lines.append(
                f"- closeness of validation/test to training ({stats['leakage']['compared']}), pairs: {counts}."
            )
    else:
        lines.append("- data statistics not found (data/stats.json)")
    return lines


def _recipe(run: RunDir, info: dict[str, Any], candidate: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines.append(f"- chosen on validation: {candidate.get('name', '?')} ({candidate.get('note', '')}).")
    val = candidate.get("val", {})
    if val:
        lines.append(
            f"- validation loss {_number(val.get('loss'))}; "
            + ", ".join(f"{_card_label(m)} {_number(val['headline'].get(m.key))}" for m in HEADLINE)
            + "."
        )
    if run.config.exists():
        import yaml

        train = (yaml.safe_load(run.config.read_text()) or {}).get("train", {})
        keys = (
            "epochs",
            "micro_batch",
            "accumulation",
            "weight_decay",
            "warmup_epochs",
            "restart_epochs",
            "label_smoothing",
            "rdrop_alpha",
            "ema_decay",
            "layer_decay",
            "seed",
        )
        lines.append("- settings (config.yaml): " + ", ".join(f"{k} {train[k]}" for k in keys if k in train) + ".")
    lr, source = learning_rate(run)
    lines.append(f"- learning rate {'not recorded' if lr is None else f'{lr:g}'}: {source}.")
    lines.append(
        f"- encoder: {info['encoder']['name']} ({info['encoder'].get('dim')}-dimensional window vectors, "
        f"up to {info['max_segments']} windows)."
    )
    return lines


def _test_metrics(results: dict[str, Any] | None, why_not: str) -> list[str]:
    lines: list[str] = []
    if results is None:
        lines.append(f"Not shown: {why_not}.")
    else:
        final = results["models"][results["final_model"]]
        rows = [("this model", final)] + [
            (f"baseline: {n.replace('_', ' ')}", e) for n, e in results["baselines"].items()
        ]
        lines += [
            f"Test split, n = {results['n']}, {int(100 * results['bootstrap']['level'])}% bootstrap intervals "
            f"({results['bootstrap']['samples']} resamples):",
            "",
            "| model | " + " | ".join(_card_label(m) for m in HEADLINE) + " |",
            "|---" * (len(HEADLINE) + 1) + "|",
        ]
        lines += [
            f"| {name} | " + " | ".join(_with_interval(entry, m.key) for m in HEADLINE) + " |" for name, entry in rows
        ]
        reads = results.get("reads", [])
        lines += [
            "",
            f"The test split was read {len(reads) or 1} time(s): "
            + "; ".join(f"read {r['read']} at {r['at']} ({r['why']})" for r in reads)
            + ".",
        ]
    return lines


def _calibration(run: RunDir, results: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    calibrators_path = run.model_files.calibrators
    if calibrators_path.exists():
        fitted = read_json(calibrators_path)
        for name, entry in fitted["targets"].items():
            lines.append(f"- {name}: {entry['method']}, {entry['reason']}.")
        for name, entry in (results or {}).get("calibration", {}).items():
            before, after = entry["before"], entry["after"]
            lines.append(
                f"- {name} on test: ECE {before['ece']:.4f} -> {after['ece']:.4f}, "
                f"NLL {before['nll']:.4f} -> {after['nll']:.4f}."
            )
    else:
        lines.append(f"Not calibrated yet: run `redheart calibrate --run {run.root}`.")
    return lines


def _limitations(run: RunDir, results: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    plan = read_json(run.crossover_candidates) if run.crossover_candidates.exists() else {}
    if plan.get("conclusion"):
        lines.append(f"- on validation: {plan['conclusion']}")
    if results is not None and results.get("test_conclusion"):
        lines.append(f"- on test: {results['test_conclusion']}")
    if results is not None:
        lines.append("- against the best baseline on test: " + _against_baselines(results) + ".")
    lines += [
        "- the emotion, regret, Bentham and SURD targets are one LLM's labels, not human annotations; "
        "the verdict is a vote share of Reddit users, whose norms it reflects.",
        "- English Reddit anecdotes only; other kinds of text are outside what it was trained and measured on.",
    ]
    return lines


def _usage(run: RunDir) -> list[str]:
    return [
        "```bash",
        f'redheart predict "TEXT" --model {run.final_model}',
        f"redheart predict --input texts.jsonl --model {run.final_model}   # JSON Lines with a 'text' field",
        "```",
        "",
        "Each input gives one JSON object with the named emotions, verdict (`label`, `argmax`, `distribution`), "
        "regret, Bentham and SURD outputs, calibrated with `calibrators.json` (`--uncalibrated` for the raw "
        "distributions and the rule fitted on them). In Python: `redheart.load(path).predict(texts)` gives the "
        "same results as typed objects (checksums verified, safetensors, nothing unpickled); "
        f"`redheart serve --model {run.final_model}` serves them over HTTP.",
    ]


LR_SOURCES = {
    "sweep": "chosen by the learning-rate sweep (sweep/choice.json)",
    "argument": "given on the command line (redheart train --lr)",
    "config": "set in the config (train.lr)",
    "default": "the config's default_lr (no sweep had run and none was given)",
}


def learning_rate(run: RunDir) -> tuple[float | None, str]:
    """The base learning rate training ran at and where it came from, as training recorded them."""
    from redheart.train.state.resume import has_resume, read_resume_info

    if has_resume(run.resume):
        info = read_resume_info(run.resume)
        if "lr" in info:
            source = str(info.get("lr_source"))
            return float(info["lr"]), LR_SOURCES.get(source, f"source {source!r}")
    return None, "training recorded no resume state to read it from"


def verdict_usage(run: RunDir, results: dict[str, Any] | None) -> list[str]:
    """Which of predict's verdict fields answers which question, with the rule's validation (and test) F1."""
    lines = [
        "- `verdict.label`: the decision rule's class (class weights on the distribution, fitted on validation "
        "to maximise macro-F1). Use it when you want one verdict per text that treats the rare verdicts fairly: "
        'it is the label the report\'s "verdict F1 (rule)" scores.',
        "- `verdict.distribution`: the (calibrated) probability of each verdict. Use it for probabilities, "
        "thresholds of your own, expected costs, or ranking.",
        "- `verdict.argmax`: the most probable class of that distribution; it rarely picks the small verdicts, so "
        "its macro-F1 is lower.",
    ]
    rule_path = run.model_files.decision_rule
    if not rule_path.exists():
        return [*lines, f"- no decision rule yet: run `redheart calibrate --run {run.root}`."]
    rule = read_json(rule_path)
    for mode, entry in rule["modes"].items():
        weights = ", ".join(f"{c} {w:.2f}" for c, w in zip(rule["classes"], entry["weights"]))
        lines.append(
            f"- rule for the {entry['distribution']} distribution ({mode}): weights {weights}; validation macro-F1 "
            f"{entry['macro_f1_argmax']:.4f} (argmax) -> {entry['macro_f1_rule']:.4f} (rule), n = {entry['n']}."
        )
    final = results["models"][results["final_model"]] if results else {}
    if "decision_rule" in final:
        scored = final["decision_rule"]
        lines.append(
            f"- on test, the {scored.get('distribution', 'served')} distribution: macro-F1 "
            f"{_number(scored.get('argmax_macro_f1'))} (argmax) -> {_number(scored['verdict_macro_f1'])} (rule)."
        )
    return lines


def card_data(run: RunDir, current: Current) -> dict[str, Any]:
    """The card's facts as data (final_model/card.json), for programs such as `redheart serve`'s /model."""
    info = read_json(run.model_files.config)
    results, why_not = current
    lr, source = learning_rate(run)
    final = results["models"][results["final_model"]] if results else None
    calibrators = read_json(run.model_files.calibrators) if run.model_files.calibrators.exists() else None
    rule = read_json(run.model_files.decision_rule) if run.model_files.decision_rule.exists() else None
    return {
        "name": info.get("info", {}).get("candidate", {}).get("name"),
        "preset": info["preset"],
        "encoder": info["encoder"],
        "learning_rate": {"value": lr, "source": source},
        "validation": info.get("info", {}).get("candidate", {}).get("val", {}).get("headline"),
        "test": (
            {
                "n": results["n"],
                "headline": final["headline"],
                "intervals": final.get("intervals"),
                "decision_rule": final.get("decision_rule"),
                "reads": len(results.get("reads", [])) or 1,
            }
            if results and final
            else {"not_shown": why_not}
        ),
        "calibration": {t: e["method"] for t, e in calibrators["targets"].items()} if calibrators else None,
        "decision_rule": rule,
        "labels": {
            "verdict.label": "the decision rule's class: for macro-F1 (the report's verdict F1 (rule))",
            "verdict.distribution": "probabilities (calibrated unless uncalibrated)",
            "verdict.argmax": "the most probable class of the distribution",
        },
    }


def write_model_card(run: RunDir) -> Path:
    """Write final_model/README.md, and its facts as final_model/card.json, from the run's files; returns the
    README's path."""
    path = run.model_files.card
    current = _current_results(run)  # fingerprints the final model, embeddings and records: once for both files
    with atomic_open(path) as handle:
        handle.write(model_card(run, current))
    write_json(run.model_files.card_data, card_data(run, current))
    return path
