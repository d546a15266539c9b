"""The Red Heart model: every module of the architecture, each sized to its parameter budget (config.FULL_BUDGETS).

Every module reads the input segment vectors (x (B,S,D), mask (B,S)) itself, except the four heads, which read
the pooled output of the backbone of their own group (A). Predictions have fixed meanings, so groups trained to
different epochs can be combined; the Kalman fusion reads them detached.

Output convention of `forward`: out[module][target]. Distribution targets (emotions, verdict) are LOGITS for
every module; out["fused"] holds them as normalised LOG-PROBABILITIES (also valid logits: softmax recovers the
distribution, exp too). Regression targets are in [0,1] with shape (B,k), regret (B,1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from redheart.config import ModelConfig
from redheart.data.dataset import check_prefix_mask
from redheart.data.schema import TARGET_DIMS
from redheart.model import losses as loss_fns
from redheart.model.analyzers import ConvAnalyzer, GatedAnalyzer, NeuralAnalyzer, RecurrentAnalyzer
from redheart.model.backbone import Backbone, PooledHead
from redheart.model.dsp import EmotionDSP
from redheart.model.groups import group_of
from redheart.model.kalman import KalmanFusion
from redheart.model.losses import Outputs
from redheart.model.phase_networks import Phase0Calibrator, Phase1Empathy, Phase2Community
from redheart.model.sizing import Solved, count_parameters, solve_width

# The target each predicting module learns; the order is the build order (heads after the backbone).
MODULE_TARGETS: dict[str, str] = {
    "emotion_head": "emotions",
    "bentham_head": "bentham_scores",
    "regret_head": "regret_factor",
    "surd_head": "surd_metrics",
    "verdict_head": "verdict",
    "neural_emotion": "emotions",
    "neural_bentham": "bentham_scores",
    "neural_regret": "regret_factor",
    "neural_surd": "surd_metrics",
    "advanced_emotion": "emotions",
    "advanced_regret": "regret_factor",
    "advanced_bentham": "bentham_scores",
    "advanced_surd": "surd_metrics",
    "dsp": "emotions",
    "phase0_calibrator": "emotions",
    "phase1_empathy": "emotions",
    "phase2_community": "verdict",
}
HEADS = ("emotion_head", "bentham_head", "regret_head", "surd_head", "verdict_head")
# What a record with a verdict and no other target needs: the trunk and the modules that predict the verdict.
VERDICT_MODULES = tuple(name for name, target in MODULE_TARGETS.items() if target == "verdict")
VERDICT_LOSSES = ("dirichlet_multinomial", "soft_ce")
MODULES = ("backbone", *MODULE_TARGETS, "kalman")
_SEQUENCE_CLASSES: dict[str, Callable[..., nn.Module]] = {
    "neural_emotion": NeuralAnalyzer,
    "neural_bentham": NeuralAnalyzer,
    "neural_regret": NeuralAnalyzer,
    "neural_surd": NeuralAnalyzer,
    "advanced_emotion": RecurrentAnalyzer,
    "advanced_regret": ConvAnalyzer,
    "advanced_bentham": GatedAnalyzer,
    "advanced_surd": GatedAnalyzer,
    "phase0_calibrator": Phase0Calibrator,
    "phase1_empathy": Phase1Empathy,
    "phase2_community": Phase2Community,
}


def _check_mask(x: Tensor, mask: Tensor, values: bool) -> None:
    if x.dim() != 3 or mask.shape != x.shape[:2]:
        raise ValueError(f"expected x (B,S,D) and mask (B,S); got x {tuple(x.shape)}, mask {tuple(mask.shape)}")
    if values:
        check_prefix_mask(mask)


class RedHeartModel(nn.Module):
    """All modules, each built at the width that puts its parameter count on `config.budgets[name]`."""

    backbone: Backbone  # added with add_module; typed here for attribute access
    kalman: KalmanFusion

    def __init__(self, config: ModelConfig, input_dim: int, max_segments: int) -> None:
        super().__init__()
        missing = set(MODULES) - set(config.budgets)
        if missing:
            raise ValueError(f"ModelConfig.budgets lacks modules {sorted(missing)}")
        if config.verdict_head_loss not in VERDICT_LOSSES:
            raise ValueError(f"model.verdict_head_loss is {config.verdict_head_loss!r}; choose one of {VERDICT_LOSSES}")
        self.config = config
        self.input_dim = input_dim
        self.max_segments = max_segments
        self.solved: dict[str, Solved] = {}
        p = config.dropout
        # One dropout of the input embeddings, shared by every module: each module reading x applies its own
        # dropout only on its (narrow) hidden features, which keeps CPU random-number cost low.
        self.input_dropout = nn.Dropout(p)

        backbone = cast(
            Backbone,
            self._sized(
                "backbone",
                lambda w: Backbone(input_dim, max_segments, w, config.backbone_layers, config.backbone_heads, p),
                step=config.backbone_heads,
            ),
        )
        self.add_module("backbone", backbone)
        for name, target in MODULE_TARGETS.items():
            out_dim = TARGET_DIMS[target]
            build: Callable[[int], nn.Module]
            if name in HEADS:
                build = lambda w, k=out_dim: PooledHead(backbone.width, w, k, p)  # type: ignore[misc]  # noqa: E731
            elif name == "dsp":
                build = lambda w, k=out_dim: EmotionDSP(input_dim, max_segments, w, k, p)  # type: ignore[misc]  # noqa: E731
            else:
                # mypy cannot type lambdas with default arguments (which bind the loop variables here)
                build = lambda w, k=out_dim, cls=_SEQUENCE_CLASSES[name]: cls(input_dim, w, k, p)  # type: ignore[misc]  # noqa: E731
            self.add_module(name, self._sized(name, build))
        self.kalman = KalmanFusion(TARGET_DIMS)
        self.solved["kalman"] = Solved(width=0, parameters=count_parameters(self.kalman), floored=False)
        # Set by the memory strategy: each top-level module recomputes its activations in the backward pass,
        # so the peak holds one module's activations (and bf16 weight copies) instead of all of them.
        self.activation_checkpointing = False

    def _sized(self, name: str, build: Callable[[int], nn.Module], step: int = 1) -> nn.Module:
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
        for name in VERDICT_MODULES if verdict_only else MODULE_TARGETS:
            out[name] = self.predict_module(name, x, mask, pooled)
        out["fused"] = self.kalman(out)
        return out

    def predict_module(self, name: str, x: Tensor, mask: Tensor, pooled: Tensor | None) -> dict[str, Tensor]:
        """One predicting module's output from the dropped inputs (heads read the backbone's `pooled`)."""
        target = MODULE_TARGETS[name]
        module = getattr(self, name)
        raw = self._call(module, cast(Tensor, pooled)) if name in HEADS else self._call(module, x, mask)
        return {target: raw if target in loss_fns.DISTRIBUTION_TARGETS else torch.sigmoid(raw)}

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
    return {name: count_parameters(getattr(model, name)) for name in MODULES}


def parameter_table(model_config: ModelConfig, input_dim: int, max_segments: int) -> list[dict[str, Any]]:
    """Rows (module, group, parameters, budget, ratio, width) of the model built on the meta device (no weights)."""
    with torch.device("meta"):
        model = RedHeartModel(model_config, input_dim, max_segments)
    rows = []
    for name, count in module_parameters(model).items():
        budget = model_config.budgets[name]
        rows.append(
            {
                "module": name,
                "group": group_of(name),
                "parameters": count,
                "budget": budget,
                "ratio": count / budget,
                "width": model.solved[name].width,
            }
        )
    return rows
