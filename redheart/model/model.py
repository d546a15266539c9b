"""The Red Heart model: every module declared in redheart.architecture, each sized to its parameter budget.

Every module reads the input segment vectors (x (B,S,D), mask (B,S)) itself, except the heads, which read
the pooled output of the backbone of their own group (A). Predictions have fixed meanings, so groups trained to
different epochs can be combined; the Kalman fusion reads them detached.

Output convention of `forward`: out[module][target]. Distribution targets (emotions, verdict) are LOGITS for
every module; out["fused"] holds them as normalised LOG-PROBABILITIES (also valid logits: softmax recovers the
distribution, exp too). Regression targets are in [0,1] with shape (B,k), regret (B,1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from redheart.architecture import (
    DISTRIBUTION_TARGETS,
    MODULES,
    TARGET_DIMS,
    ModuleSpec,
    fusion_sources,
    heads,
    module_groups,
    module_names,
    module_targets,
    verdict_modules,
)
from redheart.config import ModelConfig
from redheart.data.dataset import check_prefix_mask
from redheart.model import losses as loss_fns
from redheart.model.backbone import Backbone
from redheart.model.builders import BUILDERS, FUSION, Build, Inputs, width_step
from redheart.model.kalman import KalmanFusion
from redheart.model.losses import Outputs
from redheart.model.sizing import Solved, count_parameters, solve_width

VERDICT_LOSSES = ("dirichlet_multinomial", "soft_ce")


def _check_mask(x: Tensor, mask: Tensor, values: bool) -> None:
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x (B,S,D) and mask (B,S); got x {tuple(x.shape)}, mask {tuple(mask.shape)}")
    if values:
        check_prefix_mask(mask)


class RedHeartModel(nn.Module):
    """The modules of `modules` (the architecture's declarations unless a caller passes others), built in that
    order, each at the width that puts its parameter count on `config.budgets[name]`."""

    backbone: Backbone  # added with add_module; typed here for attribute access
    kalman: KalmanFusion

    def __init__(
        self, config: ModelConfig, input_dim: int, max_segments: int, modules: Sequence[ModuleSpec] = MODULES
    ) -> None:
        super().__init__()
        self.specs = tuple(modules)
        self.module_names = module_names(self.specs)
        missing = set(self.module_names) - set(config.budgets)
        if missing:
            raise ValueError(f"ModelConfig.budgets lacks modules {sorted(missing)}")
        if config.verdict_head_loss not in VERDICT_LOSSES:
            raise ValueError(f"model.verdict_head_loss is {config.verdict_head_loss!r}; choose one of {VERDICT_LOSSES}")
        self.config = config
        self.input_dim = input_dim
        self.max_segments = max_segments
        # The target of each predicting module in build order; the groups; the modules reading the backbone's
        # pooled output; what a verdict-only record runs.
        self.module_targets = module_targets(self.specs)
        self.groups = module_groups(self.specs)
        self.heads = heads(self.specs)
        self.verdict_modules = verdict_modules(self.specs)
        self.solved: dict[str, Solved] = {}
        # One dropout of the input embeddings, shared by every module: each module reading x applies its own
        # dropout only on its (narrow) hidden features, which keeps CPU random-number cost low.
        self.input_dropout = nn.Dropout(config.dropout)

        inputs = Inputs(config, input_dim, max_segments)
        for spec in self.specs:
            if spec.kind == FUSION:
                fusion = KalmanFusion(TARGET_DIMS, fusion_sources(self.specs))
                self.add_module(spec.name, fusion)
                self.solved[spec.name] = Solved(width=0, parameters=count_parameters(fusion), floored=False)
                continue
            if spec.kind not in BUILDERS:
                raise ValueError(f"module {spec.name!r} is of kind {spec.kind!r}, which has no builder")
            out_dim = TARGET_DIMS[spec.target] if spec.target is not None else 0
            module = self._sized(spec.name, BUILDERS[spec.kind](inputs, out_dim), width_step(spec.kind, config))
            self.add_module(spec.name, module)
            if isinstance(module, Backbone):
                inputs = dataclasses.replace(inputs, backbone_width=module.width)
        # Set by the memory strategy: each top-level module recomputes its activations in the backward pass,
        # so the peak holds one module's activations (and bf16 weight copies) instead of all of them.
        self.activation_checkpointing = False

    def _sized(self, name: str, build: Build, step: int = 1) -> nn.Module:
        solved = solve_width(build, self.config.budgets[name], step=step)
        self.solved[name] = solved
        return build(solved.width)

    @property
    def num_backbone_depths(self) -> int:
        return self.config.backbone_layers + 2

    def backbone_depth(self, param_name: str) -> int | None:
        """Layer-wise LR decay depth: 0 input projection/positions, i the i-th layer, L+1 final norm; else None."""
        prefix = "backbone."
        return self.backbone.depth_of(param_name[len(prefix) :]) if param_name.startswith(prefix) else None

    def forward(self, x: Tensor, mask: Tensor, verdict_only: bool = False) -> Outputs:
        """Every module's output; with `verdict_only`, only the verdict's (for records with no other target:
        the modules left out would get neither loss nor gradient from them, so running them is wasted)."""
        mask = mask.to(torch.bool)
        # The values only where reading them costs no wait for a GPU, and not in training, whose batches come
        # from splits checked once when they were made (SplitTensors).
        _check_mask(x, mask, values=not self.training and mask.device.type == "cpu")
        x = self.input_dropout(x)
        pooled = self._call(self.backbone, x, mask)
        out: Outputs = {}
        for name in self.verdict_modules if verdict_only else self.module_targets:
            out[name] = self.predict_module(name, x, mask, pooled)
        out["fused"] = self.kalman(out)
        return out

    def predict_module(self, name: str, x: Tensor, mask: Tensor, pooled: Tensor | None) -> dict[str, Tensor]:
        """One predicting module's output from the dropped inputs (heads read the backbone's `pooled`)."""
        target = self.module_targets[name]
        module = getattr(self, name)
        raw = self._call(module, cast(Tensor, pooled)) if name in self.heads else self._call(module, x, mask)
        return {target: raw if target in DISTRIBUTION_TARGETS else torch.sigmoid(raw)}

    def _call(self, module: nn.Module, *args: Tensor) -> Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            # Non-reentrant checkpointing restores the RNG state, so the recomputed dropout masks are the same.
            return cast(Tensor, checkpoint(module, *args, use_reentrant=False))
        return cast(Tensor, module(*args))

    def losses(self, out: Outputs, batch: dict[str, Tensor], label_smoothing: float) -> dict[str, Tensor]:
        """One scalar loss per predicting module plus "kalman"; the training total is their sum."""
        votes = ("verdict_head",) if self.config.verdict_head_loss == "dirichlet_multinomial" else ()
        return loss_fns.module_losses(out, batch, label_smoothing, vote_modules=votes)

    @staticmethod
    def consistency(out_a: Outputs, out_b: Outputs, batch: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The R-Drop term per module (symmetric KL for distributions, MSE for regression outputs); with
        `batch`, over the rows where the module's target is present."""
        return loss_fns.consistency(out_a, out_b, batch)


def module_parameters(model: RedHeartModel) -> dict[str, int]:
    return {name: count_parameters(getattr(model, name)) for name in model.module_names}


def parameter_table(
    model_config: ModelConfig, input_dim: int, max_segments: int, modules: Sequence[ModuleSpec] = MODULES
) -> list[dict[str, Any]]:
    """Rows (module, group, parameters, budget, ratio, width) of the model built on the meta device (no weights)."""
    with torch.device("meta"):
        model = RedHeartModel(model_config, input_dim, max_segments, modules)
    group = {module: name for name, members in model.groups.items() for module in members}
    rows = []
    for name, count in module_parameters(model).items():
        budget = model_config.budgets[name]
        rows.append(
            {
                "module": name,
                "group": group[name],
                "parameters": count,
                "budget": budget,
                "ratio": count / budget,
                "width": model.solved[name].width,
            }
        )
    return rows
