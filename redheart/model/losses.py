"""Training losses: per-module supervised terms masked by target presence, and the R-Drop consistency term.

Distribution targets (emotions, verdict) are compared on LOGITS through log_softmax (never softmax first);
regression outputs are already in [0,1] and compared by MSE with an explicit shape check.

A module listed in `vote_modules` learns the verdict from the community's vote counts by the
Dirichlet-multinomial likelihood instead (`dirichlet_multinomial_nll`): its logits are the log of the
Dirichlet concentrations, so softmax(logits) is still its predicted vote distribution.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor

from redheart.architecture import DISTRIBUTION_TARGETS

VOTES = "verdict_votes"  # the batch key of the raw vote counts (N, 5) beside the normalised "verdict"
# exp() of a logit past this overflows float32 concentrations; clamping keeps the loss finite.
_MAX_LOG_CONCENTRATION = 30.0


def dirichlet_multinomial_nll(logits: Tensor, counts: Tensor) -> Tensor:
    """Per-row negative log-likelihood (B,) of vote counts under a Dirichlet-multinomial, divided by the votes.

    With concentrations a = exp(logits), A = sum(a), counts n and N = sum(n):
    log p(n | a) = log N! - sum log n_k! + lgamma(A) - lgamma(N + A) + sum (lgamma(n_k + a_k) - lgamma(a_k)).
    Dividing by N makes one row's loss a per-vote quantity on the scale of a cross-entropy, so an anecdote
    with many votes does not outweigh the rest of the batch and the other tasks. Rows with N = 0 give 0.
    """
    if logits.shape != counts.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and vote counts {tuple(counts.shape)} differ in shape")
    # float64: with large concentrations lgamma(N + A) and lgamma(A) are both about A log A (5e10 at A = 2e9),
    # where float32's spacing (4096) swallows their difference (about N log A): float64's spacing there is 1e-5.
    alpha = logits.double().clamp(max=_MAX_LOG_CONCENTRATION).exp()
    counts = counts.double()
    total_alpha, total = alpha.sum(-1), counts.sum(-1)
    log_likelihood = (
        torch.lgamma(total + 1)
        - torch.lgamma(counts + 1).sum(-1)
        + torch.lgamma(total_alpha)
        - torch.lgamma(total + total_alpha)
        + (torch.lgamma(counts + alpha) - torch.lgamma(alpha)).sum(-1)
    )
    return (-log_likelihood / total.clamp_min(1)).float()  # float32 as before, whatever autocast gave the logits


def vote_loss(logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """Mean Dirichlet-multinomial loss over the rows with a verdict; zero (not NaN) if none has one."""
    if VOTES not in batch:
        raise ValueError(f"the batch has no {VOTES!r} (vote counts), which the Dirichlet-multinomial loss needs")
    present = batch["verdict_present"].to(torch.bool)
    counts = torch.where(present.unsqueeze(-1), batch[VOTES].float(), torch.zeros_like(batch[VOTES].float()))
    nll = dirichlet_multinomial_nll(logits, counts)
    per_row = torch.where(present, nll, torch.zeros_like(nll))
    return per_row.sum() / present.sum().clamp_min(1)


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


def module_losses(
    out: Outputs, batch: dict[str, Tensor], label_smoothing: float, vote_modules: Collection[str] = ()
) -> dict[str, Tensor]:
    """One scalar per predicting module, plus "kalman" for the fused outputs (the fusion's own loss).

    Modules in `vote_modules` learn the verdict by the Dirichlet-multinomial likelihood of the votes.
    """
    losses: dict[str, Tensor] = {}
    for target, members in _by_target(out).items():
        for module, _ in members:
            if out[module][target].shape != batch[target].shape:
                raise ValueError(
                    f"{module} predicts {target!r} with shape {tuple(out[module][target].shape)},"
                    f" the target has {tuple(batch[target].shape)}"
                )
        if target == "verdict":
            for module, key in [m for m in members if m[0] in vote_modules]:
                _add(losses, key, vote_loss(out[module][target], batch))
            members = [m for m in members if m[0] not in vote_modules]
            if not members:
                continue
        stacked = torch.stack([out[module][target] for module, _ in members])
        for (_, key), value in zip(members, target_loss(target, stacked, batch, label_smoothing).unbind(0)):
            _add(losses, key, value)
    return losses


def consistency(out_a: Outputs, out_b: Outputs, batch: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """R-Drop per module: symmetric KL between the two passes' distributions, MSE between regression outputs.

    With `batch`, each target's term is averaged over the rows where that target is present only, so a
    record without (say) emotions sends no gradient at all into the emotion modules.
    """
    terms: dict[str, Tensor] = {}
    for target, members in _by_target(out_a).items():
        a = torch.stack([out_a[module][target] for module, _ in members]).float()
        b = torch.stack([out_b[module][target] for module, _ in members]).float()
        if target in DISTRIBUTION_TARGETS:
            log_a, log_b = F.log_softmax(a, dim=-1), F.log_softmax(b, dim=-1)
            # 0.5 * (KL(a||b) + KL(b||a)) per row.
            per_row = (0.5 * (log_a.exp() - log_b.exp()) * (log_a - log_b)).sum(-1)
        else:
            per_row = (a - b).square().mean(-1)
        if batch is None:
            per_module = per_row.mean(-1)
        else:
            present = batch[f"{target}_present"].to(torch.bool)
            per_row = torch.where(present, per_row, torch.zeros_like(per_row))
            per_module = per_row.sum(-1) / present.sum().clamp_min(1)
        for (_, key), value in zip(members, per_module.unbind(0)):
            _add(terms, key, value)
    return terms


def split_halves(out: Outputs) -> tuple[Outputs, Outputs]:
    """Split the output of one forward over cat([x, x]) into the two R-Drop passes."""
    first = {m: {t: v.chunk(2, dim=0)[0] for t, v in preds.items()} for m, preds in out.items()}
    second = {m: {t: v.chunk(2, dim=0)[1] for t, v in preds.items()} for m, preds in out.items()}
    return first, second
