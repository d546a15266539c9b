"""Module outputs of checkpoints on one split, computed once and reused by every candidate.

Every group reads the input embeddings itself and the fusion reads their outputs detached, so
the outputs of a model assembled from several epochs are those epochs' outputs put side by side: a
crossover, its refinements and its shifted variants cost no forward pass once each checkpoint's outputs
are cached. Only weight averages (soups) need new forwards.

Fused predictions are kept as the fusion gives them: log-probabilities for distributions, values in [0,1]
for regression targets. `fused_loss` is the fusion's own loss (no label smoothing); it is the one
validation score every candidate is ranked by.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from redheart.architecture import DISTRIBUTION_TARGETS, TARGET_DIMS, group_of
from redheart.core.checkpoint_files import verify_checkpoint
from redheart.core.rundir import group_weights
from redheart.data.dataset import SplitTensors
from redheart.model.groups import GROUPS
from redheart.model.kalman import KalmanFusion
from redheart.model.losses import target_loss
from redheart.model.model import RedHeartModel
from redheart.scoring.metrics import evaluate_predictions, headline
from redheart.train.evaluation import placement_for, split_forward
from redheart.train.state.checkpoints import load_checkpoint

Outputs = dict[str, dict[str, Tensor]]
Fused = dict[str, Tensor]


class SplitOutputs:
    """Module outputs (no "fused") on one split, per checkpoint folder, computed on first use."""

    def __init__(
        self, model: RedHeartModel, split: SplitTensors, batch_size: int = 512, device: torch.device | str = "auto"
    ) -> None:
        """`device`: where the forwards run ("auto": a GPU where there is one; train.evaluation.placement_for);
        the outputs are kept in host memory."""
        self.model = model
        self.split = split
        self.batch_size = batch_size
        self.device = device
        self._cache: dict[Path, Outputs] = {}
        self._fits: dict[tuple, tuple[KalmanFusion, float]] = {}

    @torch.no_grad()
    def forward(self) -> Outputs:
        """The current weights' module outputs on the split, eval mode, in batches."""
        self.model.eval()
        placement = placement_for(self.model, self.device)
        parts: dict[str, dict[str, list[Tensor]]] = {}
        for _, out in split_forward(self.model, self.split, self.batch_size, placement):
            for module, targets in out.items():
                if module == "fused":
                    continue
                for target, value in targets.items():
                    parts.setdefault(module, {}).setdefault(target, []).append(value.float())
        return {module: {t: torch.cat(v).cpu() for t, v in targets.items()} for module, targets in parts.items()}

    def of_folder(self, folder: Path) -> Outputs:
        folder = Path(folder)
        if folder not in self._cache:
            load_checkpoint(self.model, folder)
            self._cache[folder] = self.forward()
        return self._cache[folder]

    def of_groups(self, folders: dict[str, Path]) -> Outputs:
        """Outputs of the model whose groups come from their own folders ({group: folder})."""
        by_group = {group: self.of_folder(folder) for group, folder in folders.items()}
        return {module: by_group[group_of(module)][module] for module in by_group[next(iter(by_group))]}

    def fitted(self, folders: dict[str, Path], steps: int) -> tuple[KalmanFusion, float]:
        """(fusion re-fitted on this split, its fused loss) of the model assembled from `folders`, memoised:
        the greedy refinement and the candidates ask for the same assemblies again and again."""
        key = tuple(sorted((group, str(folder)) for group, folder in folders.items()))
        if key not in self._fits:
            outputs = self.of_groups(folders)
            fusion = fit_fusion(outputs, self.split, steps)
            self._fits[key] = (fusion, fused_loss(fuse(fusion, outputs), self.split))
        return self._fits[key]

    def of_state(self, state: dict[str, Tensor]) -> Outputs:
        self.model.load_state_dict(state, strict=True)
        return self.forward()


def average_state(folders: list[Path]) -> dict[str, Tensor]:
    """Uniform average of the full state dicts of the checkpoints (float tensors; others from the first)."""
    total: dict[str, Tensor] = {}
    for folder in folders:
        verify_checkpoint(folder)
        for group in GROUPS:
            for key, value in load_file(str(group_weights(folder, group))).items():
                if not value.is_floating_point():
                    total.setdefault(key, value)
                else:
                    total[key] = total[key] + value.double() if key in total else value.double()
    return {k: (v / len(folders)).float() if v.is_floating_point() else v for k, v in total.items()}


def fit_fusion(outputs: Outputs, split: SplitTensors, steps: int) -> KalmanFusion:
    """A fresh fusion re-fitted on these outputs (validation only)."""
    fusion = KalmanFusion(TARGET_DIMS)
    fusion.refit(outputs, split.tensors, steps=steps)
    return fusion.eval()


@torch.no_grad()
def fuse(fusion: KalmanFusion, outputs: Outputs) -> Fused:
    return {target: value.detach() for target, value in fusion(outputs).items()}


def average_fused(members: list[Fused]) -> Fused:
    """Probability ensemble: mean of the distributions (returned as log-probabilities) and of the values."""
    out = {}
    for target in members[0]:
        stacked = torch.stack([m[target] for m in members])
        out[target] = stacked.exp().mean(0).log() if target in DISTRIBUTION_TARGETS else stacked.mean(0)
    return out


@torch.no_grad()
def fused_loss(fused: Fused, split: SplitTensors) -> float:
    """The fusion's loss of these predictions: lower is better, the ranking score of every candidate."""
    return float(sum(target_loss(target, value, split.tensors) for target, value in fused.items()))


def as_numpy(fused: Fused) -> dict[str, np.ndarray]:
    """Probabilities for distributions, values for regression targets, as evaluate_predictions wants them."""
    return {t: (v.exp() if t in DISTRIBUTION_TARGETS else v).numpy().astype(np.float64) for t, v in fused.items()}


def split_metrics(fused: Fused, split: SplitTensors) -> dict[str, dict]:
    targets = {name: split.tensors[name].numpy() for name in TARGET_DIMS}
    present = {name: split.tensors[f"{name}_present"].numpy() for name in TARGET_DIMS}
    return evaluate_predictions(as_numpy(fused), targets, present)


def summary(fused: Fused, split: SplitTensors) -> dict:
    """{"loss", "metrics", "headline"} of fused predictions on a split."""
    metrics = split_metrics(fused, split)
    return {"loss": fused_loss(fused, split), "metrics": metrics, "headline": headline(metrics)}
