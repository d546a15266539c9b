"""Whether the selection phases' outputs still describe their inputs, so the pipeline can leave them be.

Crossover and calibration are deterministic in intent but not bit for bit: the fusions are re-fitted by
gradient steps whose floating-point sums can differ from one process to the next, and near-ties between
candidates can then fall the other way. Re-running them on unchanged checkpoints would save a slightly
different final model, and the test results would (rightly) no longer describe it. So the pipeline
re-runs crossover only when its inputs changed (the saved checkpoints, the validation split, the model
and selection settings), and calibration only when the final model it was fitted for changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from redheart.config import RunConfig, to_dict
from redheart.core.atomic import read_json
from redheart.core.checkpoint_files import MANIFEST, sha256
from redheart.core.rundir import RunDir


def weights_digest(folder: Path) -> str:
    """sha256 of a sealed checkpoint's weight files as its manifest lists them; its metrics.json (timings) is left
    out, so re-saving the same weights (the EMA at the end of every train call) changes nothing."""
    files = read_json(folder / MANIFEST)["files"]
    weights = {name: digest for name, digest in sorted(files.items()) if name.endswith(".safetensors")}
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


def crossover_inputs(run: RunDir, config: RunConfig) -> str:
    """sha256 of what crossover reads: every sealed checkpoint, the split, the model and selection settings."""
    folders = sorted(p for p in run.checkpoints.glob("*") if (p / MANIFEST).exists())
    settings = to_dict(config)
    tree = {
        "checkpoints": {p.name: weights_digest(p) for p in folders},
        "split": sha256(run.split_manifest) if run.split_manifest.exists() else None,
        "settings": {section: settings[section] for section in ("encoder", "model", "select")},
    }
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


def crossover_is_current(run: RunDir, config: RunConfig) -> bool:
    """True when crossover ran on exactly the inputs on disk now and its final model is complete."""
    path = run.crossover_candidates
    if not path.exists() or not (run.model_files.manifest).exists():
        return False
    return read_json(path).get("inputs") == crossover_inputs(run, config)


def calibrators_are_current(run: RunDir) -> bool:
    """True when calibrators.json was fitted for the final model on disk now."""
    path = run.calibrators
    if not path.exists() or not (run.model_files.manifest).exists():
        return False
    return read_json(path).get("model_sha256") == sha256(run.model_files.manifest)
