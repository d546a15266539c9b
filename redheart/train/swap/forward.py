"""One module group's share of the joint forward and loss, so the groups can be trained one at a time.

RedHeartModel.forward decomposes exactly along GROUPS: the input dropout is drawn once and shared, every
module reads the dropped x (the four heads read group A's own backbone), and the Kalman fusion of group C
reads every prediction detached. Given the same dropped inputs, and for group C the other groups'
predictions, the gradient of the joint loss with respect to one group's parameters is the gradient of
that group's own loss terms (tests/test_group_swap.py checks this).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from redheart.config import TrainConfig
from redheart.model.groups import GROUPS
from redheart.model.losses import Outputs, split_halves
from redheart.model.model import RedHeartModel
from redheart.train.trainer import rdrop_losses

# The group holding the Kalman fusion, which reads every other group's predictions: it goes last.
FUSION_GROUP = "group_c"
SWAP_ORDER: tuple[str, ...] = (*(group for group in GROUPS if group != FUSION_GROUP), FUSION_GROUP)

# The inputs of one forward pass: dropped x and its boolean mask.
Pass = tuple[Tensor, Tensor]


def dropped_passes(model: RedHeartModel, x: Tensor, mask: Tensor, rdrop: bool, sequential: bool) -> list[Pass]:
    """The forward passes of one micro-batch, with the input dropout drawn once for every group.

    Under R-Drop the dropout is drawn over [x; x] as the joint forward draws it, so the two halves are
    independent passes; `sequential` (memory saving) runs those halves as two passes of one copy each.
    """
    mask = mask.to(torch.bool)
    if not rdrop:
        return [(model.input_dropout(x), mask)]
    dropped = model.input_dropout(torch.cat([x, x]))
    if sequential:
        return [(half, mask) for half in dropped.chunk(2)]
    return [(dropped, torch.cat([mask, mask]))]


def runs_on_verdict_only(model: RedHeartModel, group: str) -> bool:
    """Whether RedHeartModel.forward(verdict_only=True) runs any of `group`'s modules (the verdict modules, the
    backbone they read, the fusion); a group that runs none gets no loss and no gradient from such a batch."""
    return any(name in model.verdict_modules or name in ("backbone", "kalman") for name in model.groups[group])


def group_outputs(
    model: RedHeartModel, group: str, x: Tensor, mask: Tensor, sources: Outputs, verdict_only: bool = False
) -> Outputs:
    """The predictions of `group`'s modules from dropped inputs, as RedHeartModel.forward makes them (with
    `verdict_only`, only the verdict modules' and the fusion's, as it does for a batch of verdict-only records).

    `sources` holds the other groups' predictions of the same pass; only the Kalman fusion reads them.
    """
    modules = model.groups[group]
    pooled = model.backbone(x, mask) if "backbone" in modules else None
    out: Outputs = {}
    for name in modules:
        if name in model.module_targets and (not verdict_only or name in model.verdict_modules):
            out[name] = model.predict_module(name, x, mask, pooled)
    if "kalman" in modules:
        out["fused"] = model.kalman({**sources, **out})
    return out


def group_loss(
    model: RedHeartModel, outs: list[Outputs], batch: dict[str, Tensor], config: TrainConfig
) -> tuple[Tensor, dict[str, Tensor]]:
    """The group's terms of trainer.forward_losses: the task loss per module and, under R-Drop, its consistency.

    `outs` is one output per pass of `dropped_passes`: one over [x; x] or two halves under R-Drop.
    """
    if config.rdrop_alpha <= 0:
        parts = model.losses(outs[0], batch, config.label_smoothing)
        return cast(Tensor, sum(parts.values())), parts
    out_a, out_b = split_halves(outs[0]) if len(outs) == 1 else outs
    return rdrop_losses(model, out_a, out_b, batch, config)


def detached(out: Outputs) -> Outputs:
    return {module: {target: value.detach() for target, value in preds.items()} for module, preds in out.items()}
