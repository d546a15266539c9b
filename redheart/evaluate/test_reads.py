"""What a test_results.json measured, and the log of every read of the test split.

The test split is read once, at the end. Its numbers are only true of the exact artefacts they were
measured on, so test_results.json carries a fingerprint of them:

  final_model   the final model's files, by their manifest (weights, config; not the model card)
  candidates    the candidate set of crossover: recipes, fitted fusions and the checkpoints they use
  calibrators   the calibrators fitted on validation
  decision_rule the verdict's class weights fitted on validation (the final model's, per mode, and the probe's)
  split         the split manifest and the clean records it indexes
  embeddings    the encoded inputs every score was computed from (their index and arrays)
  settings      the evaluation settings the numbers depend on: the bootstrap's samples and seed

When any of them changes after the read (more training, a new crossover, a refit), the stored numbers
describe another model: `check_fingerprint` says what changed and which command reads the test split
again. That second read is a deliberate act (`redheart evaluate --reread-test`), recorded in the file's
`reads` list with its time and fingerprint, so a reader sees how often the test split was looked at.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from redheart.config import RunConfig, load_config
from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import sha256, verify_checkpoint
from redheart.core.phases import run_first
from redheart.core.rundir import RunDir

PARTS = ("final_model", "candidates", "calibrators", "decision_rule", "split", "embeddings", "settings")


class StaleTestResults(ValueError):
    """test_results.json was measured on artefacts that have changed since."""


def _digest(tree: Any) -> str:
    return hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()


def _need(path: Path, run: RunDir, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no {what}; {run_first(run, path)}")
    return path


def _final_model_files(run: RunDir) -> dict[str, str]:
    _need(run.model_files.manifest, run, "final model")
    files = dict(verify_checkpoint(run.final_model)["files"])
    files.pop(run.model_files.card.name, None)  # documentation, rewritten from the results; not what was measured
    return files


def _candidates_digest(run: RunDir) -> str:
    from redheart.select.candidates import Candidate
    from redheart.select.freshness import weights_digest

    plan = read_json(_need(run.crossover_candidates, run, "crossover results"))
    entries, used, folders = [], set(), set()
    for entry in plan["candidates"]:
        entry = dict(entry)
        if "fusion" in entry:
            entry["fusion"] = sha256(run.root / entry["fusion"])
        fields = {k: v for k, v in entry.items() if k in Candidate.__dataclass_fields__ and k != "fusion"}
        candidate = Candidate(**fields)
        used |= candidate.used_epochs()
        if candidate.folder:
            folders.add(candidate.folder)
        entries.append(entry)
    # The weights only: the EMA folder is re-saved, same weights, new timings, at the end of every train call.
    checkpoints = {run.checkpoint(e).name: weights_digest(run.checkpoint(e)) for e in sorted(used)}
    checkpoints |= {f: weights_digest(run.root / f) for f in sorted(folders)}
    return _digest({"candidates": entries, "final_model": plan["final_model"], "checkpoints": checkpoints})


def _embeddings_digest(run: RunDir) -> str:
    index = _need(run.embedding_index, run, "embeddings")
    arrays = run.embeddings / read_json(index)["file"]
    return _digest({"index": sha256(index), "arrays": sha256(_need(arrays, run, "embeddings"))})


def fingerprint(run: RunDir, config: RunConfig | None = None) -> dict[str, str]:
    """sha256 of each of PARTS as they are on disk now (the settings: `config`'s, else the run's config.yaml);
    FileNotFoundError naming the phase to run if one is missing."""
    split = _need(run.split_manifest, run, "split manifest")
    records = _need(run.clean_records, run, "clean records")
    select = (config or load_config(_need(run.config, run, "config"))).select
    return {  # in phase order, so the first missing input names the earliest phase to run
        "final_model": _digest(_final_model_files(run)),
        "candidates": _candidates_digest(run),
        "calibrators": sha256(_need(run.calibrators, run, "calibrators")),
        "decision_rule": sha256(_need(run.decision_rule, run, "verdict decision rule")),
        "split": _digest({"split": sha256(split), "records": sha256(records)}),
        "embeddings": _embeddings_digest(run),
        "settings": _digest({"bootstrap_samples": select.bootstrap_samples, "bootstrap_seed": select.bootstrap_seed}),
    }


def changed_parts(recorded: dict[str, str] | None, current: dict[str, str]) -> list[str]:
    """The parts whose hash differs (every part when nothing was recorded)."""
    recorded = recorded or {}
    return [part for part in PARTS if recorded.get(part) != current[part]]


def check_fingerprint(run: RunDir, results: dict[str, Any], current: dict[str, str]) -> None:
    """Raise StaleTestResults saying what changed and what to run, unless `results` measured `current`."""
    changed = changed_parts(results.get("fingerprint"), current)
    if not changed:
        return
    path = run.test_results
    if "fingerprint" not in results:
        what = "it records no fingerprint of what it measured (written by an older version)"
    else:
        what = "; ".join(
            f"{part} changed ({results['fingerprint'][part][:10]} -> {current[part][:10]})" for part in changed
        )
    reads = len(results.get("reads", [])) or 1
    raise StaleTestResults(
        f"{path} holds test numbers of other artefacts than the run's current ones: {what}. "
        f"Its numbers are not printed. To read the test split again for the current final model (read "
        f"{reads + 1} of the test split, recorded in the file), run `redheart evaluate --run {run.root} --reread-test` "
        f"(or `redheart pipeline ... --reread-test`), then `redheart report --run {run.root}`."
    )


def read_record(number: int, current: dict[str, str], previous: dict[str, Any] | None) -> dict[str, Any]:
    """One entry of `reads`: its number, time, fingerprint, and why the split was read."""
    if previous is None:
        why = "first read"
    else:
        changed = changed_parts(previous.get("fingerprint"), current)
        why = "re-read on request (--reread-test); " + (
            f"changed since the last read: {', '.join(changed)}" if changed else "nothing changed"
        )
    return {
        "read": number,
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "fingerprint": current,
        "why": why,
    }


def format_reads(results: dict[str, Any]) -> str:
    """One line per read of the test split, oldest first."""
    reads = results.get("reads") or [
        {"read": 1, "at": results.get("evaluated_at", "?"), "why": "first read (no read log)"}
    ]
    lines = [f"test split read {len(reads)} time{'s' if len(reads) > 1 else ''}:"]
    lines += [f"  read {r['read']} at {r['at']}: {r['why']}" for r in reads]
    if len(reads) > 1:
        lines.append(
            "  the numbers above are from the last read; choices made after seeing an earlier read"
            " are not blind to the test split"
        )
    return "\n".join(lines)
