"""Training losses: per-module supervised terms masked by target presence, and the R-Drop consistency term.

Distribution targets (emotions, verdict) are compared on LOGITS through log_softmax (never softmax first);
regression outputs are already in [0,1] and compared by MSE with an explicit shape check.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from redheart.data.schema import DISTRIBUTION_TARGETS


def soft_cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Per-row cross-entropy (B,) of soft targets against logits, the target mixed with uniform by `label_smoothing`."""
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ in shape")
    if label_smoothing:
        target = (1.0 - label_smoothing) * target + label_smoothing / target.shape[-1]
    return -(target * F.log_softmax(logits, dim=-1)).sum(-1)


def target_loss(name: str, prediction: Tensor, batch: dict[str, Tensor], label_smoothing: float = 0.0) -> Tensor:
    """Mean loss over the rows where target `name` is present; zero (not NaN) if none is.

    `prediction` is (B,k), or (n,B,k) for n modules predicting the same target at once (one kernel per
    operation instead of n: the loss is a visible share of a CPU training step); the result is () or (n,).
    """
    present = batch[f"{name}_present"].to(torch.bool)
    # Losses in float32 even when the model ran under bf16/fp16 autocast.
    prediction = prediction.float()
    target = batch[name].float()
    if prediction.shape[-2:] != target.shape:
        raise ValueError(f"prediction for {name!r} has shape {tuple(prediction.shape)}, target {tuple(target.shape)}")
    # Absent rows may hold anything (NaN included); replace them so no NaN reaches the backward pass.
    target = torch.where(present.unsqueeze(-1), target, torch.zeros_like(target))
    if name in DISTRIBUTION_TARGETS:
        per_row = soft_cross_entropy(prediction, target.expand_as(prediction), label_smoothing)
    else:
        per_row = (prediction - target).square().mean(-1)
    per_row = torch.where(present, per_row, torch.zeros_like(per_row))
    return per_row.sum(-1) / present.sum().clamp_min(1)


Outputs = dict[str, dict[str, Tensor]]


def _by_target(out: Outputs) -> dict[str, list[tuple[str, str]]]:
    """target -> [(module, loss key)], the loss key being "kalman" for the fused outputs."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for module, predictions in out.items():
        for target in predictions:
            groups.setdefault(target, []).append((module, "kalman" if module == "fused" else module))
    return groups


def _add(terms: dict[str, Tensor], key: str, value: Tensor) -> None:
    terms[key] = terms[key] + value if key in terms else value


def module_losses(out: Outputs, batch: dict[str, Tensor], label_smoothing: float) -> dict[str, Tensor]:
    """One scalar per predicting module, plus "kalman" for the fused outputs (the fusion's own loss)."""
    losses: dict[str, Tensor] = {}
    for target, members in _by_target(out).items():
        for module, _ in members:
            if out[module][target].shape != batch[target].shape:
                raise ValueError(
                    f"{module} predicts {target!r} with shape {tuple(out[module][target].shape)},"
                    f" the target has {tuple(batch[target].shape)}"
                )
        stacked = torch.stack([out[module][target] for module, _ in members])
        for (_, key), value in zip(members, target_loss(target, stacked, batch, label_smoothing).unbind(0)):
            _add(losses, key, value)
    return losses


def consistency(out_a: Outputs, out_b: Outputs) -> dict[str, Tensor]:
    """R-Drop per module: symmetric KL between the two passes' distributions, MSE between regression outputs."""
    terms: dict[str, Tensor] = {}
    for target, members in _by_target(out_a).items():
        a = torch.stack([out_a[module][target] for module, _ in members]).float()
        b = torch.stack([out_b[module][target] for module, _ in members]).float()
        if target in DISTRIBUTION_TARGETS:
            log_a, log_b = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
            # 0.5 * (KL(a||b) + KL(b||a)) per row, averaged over the batch.
            per_module = (0.5 * (log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(-1).mean(-1)
        else:
            per_module = (a - b).square().mean((-2, -1))
        for (_, key), value in zip(members, per_module.unbind(0)):
            _add(terms, key, value)
    return terms


def split_halves(out: Outputs) -> tuple[Outputs, Outputs]:
    """Split the output of one forward over cat([x, x]) into the two R-Drop passes."""
    first = {m: {t: v.chunk(2, dim=0)[0] for t, v in preds.items()} for m, preds in out.items()}
    second = {m: {t: v.chunk(2, dim=0)[1] for t, v in preds.items()} for m, preds in out.items()}
    return first, second
