"""Predictions and metrics of a model on one split, in eval mode (no dropout, no gradients)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import numpy as np
import torch
from torch import nn

from redheart.data.dataset import SplitTensors, split_targets
from redheart.data.schema import DISTRIBUTION_TARGETS, TARGET_DIMS
from redheart.model.model import RedHeartModel
from redheart.scoring.metrics import evaluate_predictions, headline
from redheart.train.precision import Precision

Predictions = dict[str, dict[str, np.ndarray]]


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(split: SplitTensors, batch_size: int, device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        index = torch.arange(start, min(start + batch_size, len(split)))
        yield split.batch(index, device)


def _probabilities(out: dict[str, dict[str, torch.Tensor]]) -> dict[str, dict[str, torch.Tensor]]:
    # softmax of logits gives the distribution; for outputs that already are log-probs it gives the same.
    return {
        module: {t: (v.float().softmax(-1) if t in DISTRIBUTION_TARGETS else v.float()) for t, v in targets.items()}
        for module, targets in out.items()
    }


@torch.no_grad()
def _forward_split(
    model: nn.Module, split: SplitTensors, batch_size: int, precision: Precision | None, label_smoothing: float | None
) -> tuple[Predictions, dict[str, float]]:
    """One pass in eval mode: predictions, and the mean loss per module when `label_smoothing` is given."""
    was_training = model.training
    model.eval()
    device = _device(model)
    chunks: dict[str, dict[str, list[np.ndarray]]] = {}
    sums: dict[str, float] = {}
    try:
        for batch in _batches(split, batch_size, device):
            with precision.autocast() if precision else torch.autocast(device.type, enabled=False):
                raw = model(batch["x"], batch["mask"])
            if label_smoothing is not None:
                for name, value in cast(RedHeartModel, model).losses(raw, batch, label_smoothing).items():
                    sums[name] = sums.get(name, 0.0) + float(value) * len(batch["x"])
            for module, targets in _probabilities(raw).items():
                for target, value in targets.items():
                    chunks.setdefault(module, {}).setdefault(target, []).append(value.cpu().numpy())
    finally:
        model.train(was_training)
    predictions = {
        module: {t: np.concatenate(parts) for t, parts in targets.items()} for module, targets in chunks.items()
    }
    return predictions, {name: total / len(split) for name, total in sums.items()}


def predict(
    model: nn.Module, split: SplitTensors, batch_size: int = 256, precision: Precision | None = None
) -> Predictions:
    """Per module, per target: probabilities (distribution targets) or values, as (N, k) numpy arrays."""
    return _forward_split(model, split, batch_size, precision, label_smoothing=None)[0]


def metrics_of(predictions: Predictions, split: SplitTensors) -> dict[str, dict]:
    """evaluate_predictions per module, each on the targets that module predicts."""
    targets, present = split_targets(split)
    result = {}
    for module, preds in predictions.items():
        scored = {name: present[name] if name in preds else np.zeros_like(present[name]) for name in TARGET_DIMS}
        result[module] = evaluate_predictions(preds, targets, scored)
    return result


def evaluate(model: nn.Module, split: SplitTensors, batch_size: int = 256, label_smoothing: float = 0.0) -> dict:
    """{"modules": metrics per module, "fused": fused metrics, "headline": fused headline, "loss": per module}."""
    predictions, losses = _forward_split(model, split, batch_size, None, label_smoothing)
    per_module = metrics_of(predictions, split)
    return {
        "modules": {name: m for name, m in per_module.items() if name != "fused"},
        "fused": per_module["fused"],
        "headline": headline(per_module["fused"]),
        "loss": losses,
    }
