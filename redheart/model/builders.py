"""How each kind of module (ModuleSpec.kind) is built at a given width: the registry the model is sized from.

A builder receives what the modules may read (the model config, the segment vectors' shape, the backbone's width
for the heads on it) and the width of the target it predicts, and returns the module as a function of its one
free width, which the budget solver turns. The Kalman fusion ("fusion") is not sized; the model builds it from
the sources the declarations give it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from redheart.config import ModelConfig
from redheart.model.analyzers import ConvAnalyzer, GatedAnalyzer, NeuralAnalyzer, RecurrentAnalyzer
from redheart.model.backbone import Backbone, PooledHead
from redheart.model.dsp import EmotionDSP
from redheart.model.phase_networks import Phase0Calibrator, Phase1Empathy, Phase2Community

Build = Callable[[int], nn.Module]  # width -> module


@dataclass(frozen=True)
class Inputs:
    """What a module is built from; `backbone_width` is None until the backbone is built."""

    config: ModelConfig
    input_dim: int
    max_segments: int
    backbone_width: int | None = None


def _backbone(i: Inputs, out_dim: int) -> Build:
    c = i.config
    return lambda w: Backbone(i.input_dim, i.max_segments, w, c.backbone_layers, c.backbone_heads, c.dropout)


def _pooled_head(i: Inputs, out_dim: int) -> Build:
    if i.backbone_width is None:
        raise ValueError("a pooled head reads the backbone, which must be built before it")
    in_dim = i.backbone_width
    return lambda w: PooledHead(in_dim, w, out_dim, i.config.dropout)


def _dsp(i: Inputs, out_dim: int) -> Build:
    return lambda w: EmotionDSP(i.input_dim, i.max_segments, w, out_dim, i.config.dropout)


def _reading_segments(cls: Callable[[int, int, int, float], nn.Module]) -> Callable[[Inputs, int], Build]:
    """A module that reads the segment vectors x itself: cls(input_dim, width, out_dim, dropout)."""
    return lambda i, out_dim: lambda w: cls(i.input_dim, w, out_dim, i.config.dropout)


BUILDERS: dict[str, Callable[[Inputs, int], Build]] = {
    "backbone": _backbone,
    "pooled_head": _pooled_head,
    "neural": _reading_segments(NeuralAnalyzer),
    "recurrent": _reading_segments(RecurrentAnalyzer),
    "conv": _reading_segments(ConvAnalyzer),
    "gated": _reading_segments(GatedAnalyzer),
    "dsp": _dsp,
    "phase0": _reading_segments(Phase0Calibrator),
    "phase1": _reading_segments(Phase1Empathy),
    "phase2": _reading_segments(Phase2Community),
}
FUSION = "fusion"


def width_step(kind: str, config: ModelConfig) -> int:
    """The multiple the solved width must be: the backbone's splits evenly over its attention heads."""
    return config.backbone_heads if kind == "backbone" else 1
