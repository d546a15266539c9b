"""A tiny run folder built in code, shared by the dataset, training and checkpoint tests.

Each record belongs to one of five classes; its words, verdict, dominant emotion and scores all follow
the class, so a model can learn the set from hashed-word features in a few epochs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from redheart.architecture import EMOTIONS, VERDICTS
from redheart.config import PRESETS, RunConfig, with_overrides
from redheart.core.atomic import write_json, write_jsonl
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors, targets_tensors
from redheart.data.encode import encode_run

CLASS_WORDS = ("apple", "brick", "cloud", "delta", "ember")
FILLER = ("the", "a", "and", "my", "friend", "today", "said", "went", "home", "so")


def synthetic_record(index: int, rng: random.Random) -> dict:
    c = index % 5
    words = [CLASS_WORDS[c]] * 3 + rng.choices(FILLER, k=6)
    rng.shuffle(words)
    emotions = [0.05] * len(EMOTIONS)
    emotions[c] = 1.0 - 0.05 * (len(EMOTIONS) - 1)
    votes = {verdict: 0 for verdict in VERDICTS}
    votes[VERDICTS[c]] = 3 + rng.randrange(3)
    votes[VERDICTS[(c + 1) % 5]] = 1
    score = (c + 0.5) / 5
    return {
        "id": f"r{index:04d}",
        "title": "",
        "text": " ".join(words),
        "action": None,
        "label": VERDICTS[c],
        "label_scores": votes,
        "emotions": emotions,
        "regret_factor": score,
        "bentham_scores": [score] * 4,
        "surd_metrics": [1 - score] * 4,
    }


def make_run(root: Path, n: int = 80, seed: int = 0, records: list[dict] | None = None) -> RunDir:
    """clean.jsonl, split.json (60/20/20 %) and hashing embeddings of `n` synthetic records."""
    run = RunDir(root)
    rng = random.Random(seed)
    records = records if records is not None else [synthetic_record(i, rng) for i in range(n)]
    write_jsonl(run.clean_records, records)
    ids = [r["id"] for r in records]
    a, b = int(len(ids) * 0.6), int(len(ids) * 0.8)
    write_json(run.split_manifest, {"train": ids[:a], "val": ids[a:b], "test": ids[b:]})
    encode_run(run, tiny_config().encoder, cache_dir=root / "cache", progress=False)
    return run


def tiny_config(**overrides) -> RunConfig:
    """The tiny preset on CPU with a short warm-up; `overrides` as {"train.lr": 1e-3}."""
    base = {"train.device": "cpu", "train.checkpoint_every": 1}
    return with_overrides(PRESETS["tiny"], {**base, **overrides})


def synthetic_split(n: int) -> SplitTensors:
    """A train split in memory (random 32-wide inputs, every third row one segment short): no run folder."""
    rng = random.Random(1)
    records = [synthetic_record(i, rng) for i in range(n)]
    generator = torch.Generator().manual_seed(0)
    tensors = {"x": torch.randn(n, 4, 32, generator=generator), "mask": torch.ones(n, 4, dtype=torch.bool)}
    tensors["mask"][::3, 2:] = False
    tensors.update(targets_tensors(records))
    return SplitTensors("train", tuple(r["id"] for r in records), tensors)


def start_driver(driver: str, args: dict[str, Any]) -> subprocess.Popen:
    """Run `driver` (Python source reading its JSON arguments from argv[1]) in a child process that imports
    these test helpers, so a test can kill it mid-way and resume in this one."""
    tests = str(Path(__file__).parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", driver, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# AdamW's step is lr * m_hat / (sqrt(v_hat) + eps): |m_hat / sqrt(v_hat)| <= (1 - beta1) / sqrt(1 - beta2) (Kingma
# and Ba 2015, section 2.1; beta1 = 0.9, beta2 = 0.999), whatever the gradient's size, so a weight whose gradient is
# rounding noise still moves by up to this many times lr per step.
ADAM_STEP = (1 - 0.9) / (1 - 0.999) ** 0.5
# A gradient entry summed in another order keeps at least this relative accuracy: fp32's 24 bits, of which up to 14
# may be lost to cancellation. AdamW's step is invariant to the gradient's scale, so such an error changes a step by
# at most about 2 * GRADIENT_ERROR * ADAM_STEP * lr.
GRADIENT_ERROR = 2.0**-10


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], lr: float, steps: int):
    """Two trainings of the same samples whose gradients were summed in another order: equal weights up to the bound
    the rounding allows after `steps` AdamW steps at a peak rate `lr` (ADAM_STEP, GRADIENT_ERROR above).

    The attention's query and key projections (and its key bias, always) have an exactly zero gradient on inputs of
    one segment (a softmax over one key is 1), which these runs' texts are: AdamW moves them by rounding noise, by up
    to lr * ADAM_STEP per step in either run, and they change no output. Every other weight must agree within
    2 * steps * lr * ADAM_STEP * GRADIENT_ERROR, far below what one more or one fewer sample in a window changes
    (then most weights differ by a sizeable fraction of lr)."""
    noise_only = 2 * steps * lr * ADAM_STEP
    rounded = noise_only * GRADIENT_ERROR
    assert actual.keys() == expected.keys()
    for key, want in expected.items():
        got = actual[key]
        if key.endswith(("qkv.weight", "qkv.bias")):
            (q, k, v), (q0, k0, v0) = got.chunk(3), want.chunk(3)
            torch.testing.assert_close(torch.cat([q, k]), torch.cat([q0, k0]), atol=noise_only, rtol=0, msg=key)
            got, want = v, v0
        torch.testing.assert_close(got, want, atol=rounded, rtol=0, msg=key)


def make_final_model(root: Path, n: int = 60) -> Path:
    """A final-model folder as calibrate leaves it (untrained tiny weights, calibrators, decision rule), on a tiny
    run of `n` records: for the tests of predict and serve, which test plumbing, not quality."""
    from redheart.evaluate.calibration import fit_calibrators
    from redheart.evaluate.decision_rule import fit_decision_rules
    from redheart.model.model import RedHeartModel
    from redheart.select.final_model import save_final_model

    run = make_run(root, n=n)
    config = tiny_config()
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
    save_final_model(model, run.final_model, config, config.encoder.dim, config.encoder.max_segments, {})
    fit_calibrators(run, with_overrides(config, {"calibration.folds": 3}))  # 3 folds: the validation split has 12 rows
    fit_decision_rules(run, config)
    return run.final_model
