"""The architecture's declarations: what derives from them, and a head added by one more declaration."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from redheart.architecture import (
    DISTRIBUTION_TARGETS,
    FULL_BUDGETS,
    MODULES,
    TARGET_DIMS,
    TARGETS,
    ModuleSpec,
    fusion_sources,
    heads,
    module_groups,
    verdict_modules,
)
from redheart.data.records import KNOWN_FIELDS
from redheart.infer import Prediction
from redheart.model.groups import group_state_dict
from redheart.model.model import RedHeartModel, parameter_table
from redheart.scoring.metrics import evaluate_predictions
from redheart.train.optim import build_optimizer
from redheart.train.state.checkpoints import load_checkpoint, save_checkpoint
from redheart.train.trainer import forward_losses

from tiny_run import synthetic_split, tiny_config


def test_derived_orders_are_the_declared_architecture() -> None:
    # Written out by hand: these orders feed batch tensors, parameter dictionaries and config.yaml.
    assert list(TARGET_DIMS.items()) == [
        ("emotions", 7),
        ("bentham_scores", 4),
        ("regret_factor", 1),
        ("surd_metrics", 4),
        ("verdict", 5),
    ]
    assert DISTRIBUTION_TARGETS == ("emotions", "verdict")
    assert {name: list(members) for name, members in module_groups().items()} == {
        "group_a": ["backbone", "emotion_head", "bentham_head", "regret_head", "surd_head", "verdict_head"],
        "group_b": ["neural_emotion", "neural_bentham", "neural_regret", "neural_surd"],
        "advanced_emotion": ["advanced_emotion"],
        "advanced_regret": ["advanced_regret"],
        "advanced_bentham": ["advanced_bentham"],
        "advanced_surd": ["advanced_surd"],
        "group_c": ["dsp", "kalman"],
        "phase": ["phase0_calibrator", "phase1_empathy", "phase2_community"],
    }
    assert list(fusion_sources().items()) == [
        (
            "emotions",
            ("emotion_head", "neural_emotion", "advanced_emotion", "dsp", "phase0_calibrator", "phase1_empathy"),
        ),
        ("verdict", ("verdict_head", "phase2_community")),
        ("bentham_scores", ("bentham_head", "neural_bentham", "advanced_bentham")),
        ("regret_factor", ("regret_head", "neural_regret", "advanced_regret")),
        ("surd_metrics", ("surd_head", "neural_surd", "advanced_surd")),
    ]
    assert verdict_modules() == ("verdict_head", "phase2_community")
    assert heads() == ("emotion_head", "bentham_head", "regret_head", "surd_head", "verdict_head")
    assert list(FULL_BUDGETS) == [
        *("backbone", "emotion_head", "bentham_head", "regret_head", "surd_head", "verdict_head"),
        *("neural_emotion", "neural_bentham", "neural_regret", "neural_surd"),
        *("advanced_emotion", "advanced_regret", "advanced_bentham", "advanced_surd"),
        *("dsp", "kalman", "phase0_calibrator", "phase1_empathy", "phase2_community"),
    ]
    # 153.1M shared 17.3 : 13.9 : 19.9 : 12.0 : 8.0 (sum 71.1), rounded to whole parameters.
    assert [FULL_BUDGETS[h] for h in heads()] == [37_252_180, 29_930_942, 42_850_774, 25_839_662, 17_226_442]


def test_every_target_reports_its_declared_metrics() -> None:
    rows = 6
    rng = np.random.default_rng(0)
    preds = {t.name: rng.dirichlet(np.ones(t.dim), rows) for t in TARGETS}
    truth = {t.name: rng.dirichlet(np.ones(t.dim), rows) for t in TARGETS}
    present = {t.name: np.ones(rows, dtype=bool) for t in TARGETS}
    results = evaluate_predictions(preds, truth, present)
    assert list(results) == [t.name for t in TARGETS]
    for declared in TARGETS:
        if declared.kind == "regression":
            assert list(results[declared.name]["dims"]) == list(declared.fields)
            for dim in results[declared.name]["dims"].values():
                assert set(dim) == set(declared.metrics)
        else:
            assert set(results[declared.name]) == {*declared.metrics, "n"}


def test_every_target_is_read_from_records_and_predicted_by_name() -> None:
    # A record holds every target but the verdict in a field of its name (the verdict comes from label and
    # label_scores); a prediction names every target.
    assert {t.name for t in TARGETS} - {"verdict"} <= set(KNOWN_FIELDS)
    assert {t.name for t in TARGETS} <= {f.name for f in dataclasses.fields(Prediction)}


# One more declaration: a second pooled head on the backbone, predicting regret, in group A.
EXTRA = ModuleSpec("second_regret_head", "group_a", "regret_factor", full_budget=0, kind="pooled_head")
WITH_EXTRA = (*MODULES[:-1], EXTRA, MODULES[-1])  # before the fusion, whose sources it joins


def test_a_declared_head_is_trained_checkpointed_fused_and_reported(tmp_path: Path) -> None:
    config = tiny_config()
    model_config = dataclasses.replace(config.model, budgets={**config.model.budgets, EXTRA.name: 2_000})
    torch.manual_seed(0)
    model = RedHeartModel(model_config, input_dim=32, max_segments=4, modules=WITH_EXTRA)

    # Fused: a source of its target, after the declared ones.
    assert model.kalman.sources["regret_factor"] == ("regret_head", "neural_regret", "advanced_regret", EXTRA.name)

    # Trained: one optimizer step on the training loss moves its weights.
    before = {k: v.clone() for k, v in getattr(model, EXTRA.name).state_dict().items()}
    split = synthetic_split(16)
    batch = split.batch(torch.arange(16))
    optimizer = build_optimizer(model, 1e-3, config.train)
    total, parts = forward_losses(model, batch, config.train)
    assert EXTRA.name in parts
    total.backward()
    optimizer.step()
    after = getattr(model, EXTRA.name).state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)

    # Checkpointed in its group: group A's file holds its weights, and they load back into a fresh model.
    assert any(key.startswith(f"{EXTRA.name}.") for key in group_state_dict(model, "group_a"))
    save_checkpoint(model, tmp_path / "epoch", {}, "tiny")
    stored = load_file(str(tmp_path / "epoch" / "group_a.safetensors"))
    assert {k: v for k, v in stored.items() if k.startswith(f"{EXTRA.name}.")}.keys() == {
        f"{EXTRA.name}.{k}" for k in after
    }
    fresh = RedHeartModel(model_config, input_dim=32, max_segments=4, modules=WITH_EXTRA)
    load_checkpoint(fresh, tmp_path / "epoch")
    assert all(torch.equal(v, after[k]) for k, v in getattr(fresh, EXTRA.name).state_dict().items())

    # Reported: a row of the parameter table, in its group, on its budget.
    rows = {row["module"]: row for row in parameter_table(model_config, 32, 4, WITH_EXTRA)}
    assert rows[EXTRA.name]["group"] == "group_a" and rows[EXTRA.name]["budget"] == 2_000
    assert rows[EXTRA.name]["parameters"] == sum(p.numel() for p in getattr(model, EXTRA.name).parameters())
