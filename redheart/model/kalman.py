"""Group C's dynamic Kalman-style fusion of the groups' predictions (about 700 parameters at every preset).

Each module that predicts a target is a noisy measurement of it. The fused estimate is the precision-weighted
mean of the measurements: weight_s ∝ exp(-(log_var[s, k] + dynamic_s(x))), where log_var is a learned static
noise level per source and dimension and `dynamic` is a linear map from the sources' current predictions (so a
source can be trusted less on inputs where the sources disagree). Sources are read DETACHED: the fusion's loss
never changes the groups, which stay independent predictors and can be swapped by crossover; `refit` then
re-estimates the fusion on validation predictions.

Emotions and the verdict are fused in log-probability space (a weighted geometric pool, renormalised), so the
fused output is a valid log-distribution. Regression targets are fused in [0,1] and calibrated by a gain and bias
in logit space. The verdict's two sources are the verdict head on the backbone and the community network; as they
are trained by different objectives (vote likelihood, soft cross-entropy), the weights fitted on validation say
which objective's predictions validation trusts.

A target whose sources are not all in the outputs (a verdict-only forward) is left out of the fused outputs.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from redheart.architecture import DISTRIBUTION_TARGETS, fusion_sources
from redheart.model.losses import target_loss

_EPS = 1e-4


class KalmanFusion(nn.Module):
    def __init__(self, target_dims: dict[str, int], sources: dict[str, tuple[str, ...]] | None = None) -> None:
        """`sources`: the modules fused for each target, by default the declared ones (architecture.fusion_sources);
        their order is the order of the parameter dictionaries."""
        super().__init__()
        self.sources = fusion_sources() if sources is None else dict(sources)
        self.log_var = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(len(s), target_dims[t])) for t, s in self.sources.items()}
        )
        # Distribution noise adapts per source; the small regression targets adapt per source and dimension.
        self.dynamic = nn.ModuleDict(
            {
                t: nn.Linear(len(s) * target_dims[t], len(s) * (1 if t in DISTRIBUTION_TARGETS else target_dims[t]))
                for t, s in self.sources.items()
            }
        )
        self.gain = nn.ParameterDict({t: nn.Parameter(torch.ones(target_dims[t])) for t in self.sources})
        self.bias = nn.ParameterDict({t: nn.Parameter(torch.zeros(target_dims[t])) for t in self.sources})
        self.reset_dynamic()

    def reset_dynamic(self) -> None:
        """Start every input-dependent adjustment at zero, so the static noise levels alone set the weights."""
        for layer in self.dynamic.values():
            nn.init.zeros_(cast(nn.Linear, layer).weight)
            nn.init.zeros_(cast(nn.Linear, layer).bias)

    def measurements(self, out: dict[str, dict[str, Tensor]], target: str) -> Tensor:
        """(B, n_sources, k) detached: log-probabilities for emotions, values in [0,1] for regression targets."""
        stacked = torch.stack([out[s][target].detach() for s in self.sources[target]], dim=1)
        return F.log_softmax(stacked, dim=-1) if target in DISTRIBUTION_TARGETS else stacked

    def forward(self, out: dict[str, dict[str, Tensor]]) -> dict[str, Tensor]:
        fused = {}
        for target, sources in self.sources.items():
            if not all(source in out for source in sources):
                continue
            m = self.measurements(out, target)
            features = m.exp() if target in DISTRIBUTION_TARGETS else m
            dynamic = self.dynamic[target](features.flatten(1)).view(m.shape[0], m.shape[1], -1)
            weights = torch.softmax(-(self.log_var[target] + dynamic), dim=1)
            estimate = (weights * m).sum(1)
            if target in DISTRIBUTION_TARGETS:
                fused[target] = F.log_softmax(self.gain[target] * estimate + self.bias[target], dim=-1)
            else:
                logit = torch.logit(estimate.clamp(_EPS, 1 - _EPS))
                fused[target] = torch.sigmoid(self.gain[target] * logit + self.bias[target])
        return fused

    def source_weights(self, target: str) -> dict[str, float]:
        """The static share of each source of `target` (the weights before the input-dependent adjustment),
        averaged over the target's dimensions."""
        weights = torch.softmax(-self.log_var[target].detach(), dim=0).mean(-1)
        return {source: float(w) for source, w in zip(self.sources[target], weights)}

    def loss(self, out: dict[str, dict[str, Tensor]], batch: dict[str, Tensor]) -> Tensor:
        return cast(Tensor, sum(target_loss(t, pred, batch) for t, pred in self.forward(out).items()))

    @torch.no_grad()
    def _init_from_errors(self, out: dict[str, dict[str, Tensor]], batch: dict[str, Tensor]) -> None:
        for target in self.sources:
            present = batch[f"{target}_present"].to(torch.bool)
            if not present.any():
                continue
            m = self.measurements(out, target)[present]
            truth = batch[target][present].to(m.dtype).unsqueeze(1)
            values = m.exp() if target in DISTRIBUTION_TARGETS else m
            mse = (values - truth).square().mean(0)
            self.log_var[target].copy_(mse.clamp_min(1e-6).log())
            self.gain[target].fill_(1.0)
            self.bias[target].zero_()
        self.reset_dynamic()

    def refit(self, predictions: dict[str, dict[str, Tensor]], targets: dict[str, Tensor], steps: int = 50) -> float:
        """Re-estimate the fusion from validation predictions (a forward's `out`, concatenated over the set)
        and targets (a batch dict with "<target>" and "<target>_present"): log-variances start at the log of each
        source's mean squared error per dimension, then LBFGS minimises the fusion loss. Returns that loss."""
        self._init_from_errors(predictions, targets)
        optimizer = torch.optim.LBFGS(self.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            value = self.loss(predictions, targets)
            value.backward()
            return value

        with torch.enable_grad():
            optimizer.step(closure)
        with torch.no_grad():
            return float(self.loss(predictions, targets))
