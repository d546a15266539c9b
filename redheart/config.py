"""Configuration as data: one dataclass per concern, named presets, and overrides from file or CLI.

A run is fully described by a `RunConfig`; it is written to `runs/NAME/config.yaml` by the first phase
and read back by every later one, so a phase run alone sees the same settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from redheart.architecture import FULL_BUDGETS
from redheart.core.atomic import atomic_open

FULL_TOTAL = 730_466_848


@dataclass(frozen=True)
class DataConfig:
    dedup_threshold: float = 92.0  # rapidfuzz fuzz.ratio, 0-100
    # "exact" (all pairs, bounded), "minhash" (LSH proposes, fuzz.ratio decides), or "auto": minhash above
    # minhash_above records, where the exact method's time and memory grow with the square of the set.
    dedup_method: str = "auto"
    minhash_above: int = 20_000
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 13
    length_bins: int = 4  # text-length quantile bins crossed with the label when stratifying
    emotion_sum_tolerance: float = 0.05


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "minilm"  # "minilm" (all-MiniLM-L6-v2) or "hashing" (no model; tests and quick runs)
    dim: int = 384  # fixed by MiniLM; free for the hashing encoder
    window_tokens: int = 128  # each segment vector is the mean-pooled MiniLM states of one window
    max_segments: int = 4  # 4 x 128 tokens covers the ~1,500 characters the LLM labels were given
    batch_size: int = 64


@dataclass(frozen=True)
class ModelConfig:
    budgets: dict[str, int] = field(default_factory=lambda: dict(FULL_BUDGETS))
    backbone_layers: int = 8
    backbone_heads: int = 8
    dropout: float = 0.1
    # The verdict head's objective: "dirichlet_multinomial" (likelihood of the vote counts) or "soft_ce"
    # (cross-entropy against the vote shares). The community network always learns by soft_ce, and the fusion,
    # fitted on validation, weighs the two, so both objectives are in every run and validation decides.
    verdict_head_loss: str = "dirichlet_multinomial"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    checkpoint_every: int = 2
    micro_batch: int = 4
    accumulation: int = 16
    lr: float | None = None  # None: the sweep's choice, else default_lr
    default_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 0.5
    restart_epochs: int = 10  # cosine warm restarts: T_0 in epochs, counted in optimizer steps
    restart_mult: int = 2
    min_lr: float = 1e-6
    amp: bool = True  # bf16/fp16 autocast where the device supports it
    clip_norm: float = 1.0  # 0 disables
    label_smoothing: float = 0.1  # 0 disables
    rdrop_alpha: float = 1.0  # 0 disables R-Drop
    ema_decay: float = 0.999  # 0 disables EMA
    # The EMA is averaged every this many optimizer steps with the decay raised to that power (train/ema.py):
    # fewer copies of the weights to a host-side EMA, for an error far below the EMA's own lag.
    ema_every: int = 1
    layer_decay: float = 0.85  # layer-wise lr decay per backbone layer; 1 disables
    seed: int = 13
    device: str = "auto"
    memory: str = "auto"  # "standard", "saving", "swap" (train/memory/strategy.py), or the memory plan's choice
    distributed: str = (
        "auto"  # under torchrun: "ddp", "fsdp" (train/parallel/fsdp.py), or "auto": fsdp for the full preset
    )
    telemetry: bool = True  # module_stats.json per checkpoint, progress reports, per-epoch "telemetry" block
    # Dtype of the epoch checkpoints' and the EMA checkpoint's floating tensors: "float32" or "bfloat16" (half the
    # disk; selection reads them back into an fp32 model). The resume state always keeps fp32, so a resumed run
    # continues exactly.
    checkpoint_dtype: str = "float32"
    check_disk: bool = True  # train and sweep refuse to start when the disk plan needs more than is free


@dataclass(frozen=True)
class SweepConfig:
    lrs: tuple[float, ...] = (1e-5, 5e-5, 1e-4, 2e-4, 5e-4)
    epochs: int = 5
    reseed_top: int = 2  # the best candidates re-run with extra seeds; the choice uses the mean
    extra_seeds: int = 2
    weights: tuple[float, float, float, float] = (0.4, 0.2, 0.2, 0.2)  # val loss, stability, efficiency, gap

    @property
    def trials(self) -> int:
        """How many trials a complete sweep has: every rate, plus extra seeds for the best `reseed_top`."""
        n = len(self.lrs)
        return n + min(n, max(0, self.reseed_top)) * self.extra_seeds

    # A finished trial's metrics are all the sweep reads; its resume state (weights, EMA, optimizer) is dropped
    # unless this is set.
    keep_trial_resume: bool = False


@dataclass(frozen=True)
class SelectConfig:
    """Phases 3-4: sweet-spot analysis, parameter crossover and the candidates it is compared with."""

    smoothing: str = "moving_average"  # centred; or "ema", "none": over checkpoints, so one noisy epoch does not decide
    smoothing_window: int = 3  # moving-average width, or EMA span (alpha = 2 / (window + 1))
    onset_run: int = 3  # over-fitting onset: the train-val gap widening this many checkpoints in a row
    shifts: tuple[int, ...] = (-4, -2, 0, 2, 4)  # epochs added to every sweet spot for the ensemble variants
    refine_rounds: int = 2  # greedy passes moving one group's epoch to a neighbouring checkpoint; 0 disables
    average_last: int = 5  # k of the uniform weight average of the last k checkpoints
    fusion_steps: int = 50  # LBFGS iterations of the fusion re-fit on validation
    batch_size: int = 512
    bootstrap_samples: int = 1000
    bootstrap_seed: int = 0


@dataclass(frozen=True)
class CalibrationConfig:
    """The calibrate phase: post-hoc calibration of the final model, fitted on validation (evaluate/calibration.py)."""

    n_bins: int = 15  # equal-width confidence bins of ECE, MCE and the reliability diagrams
    folds: int = 5  # cross-validation folds inside the validation split, for choosing the method
    seed: int = 0  # the folds' shuffle


@dataclass(frozen=True)
class StudyConfig:
    """`redheart study`: learning curves over model size and training data, scored on validation.

    Each size first gets its own learning rate: a short sweep (the sweep phase's machinery and score) of
    `lrs` on `sweep_fraction` of the training records for `sweep_epochs` epochs. Each point then trains the
    run's recipe with that size's model and rate on a nested subset of the training records until validation
    stops improving: it stops once the total validation loss has not improved for `patience_steps` optimizer
    steps, and at the latest after `max_steps` (the step cap; the cosine cycle spans the cap). A point stopped by
    the cap is marked not converged. The point's metrics are those of its best epoch (lowest validation loss),
    so training time is an outcome and distinct records are the data axis. `check` names the points that
    `redheart study --check` trains again with twice the cap, to show the cap does not decide the result.
    """

    sizes: tuple[str, ...] = ("tiny", "small", "medium")  # presets whose model section a point trains
    fractions: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0)  # of the bundled training records; nested subsets
    seed: int = 13  # the order the subsets are drawn in; the training seed is train.seed
    full_with_cuda: bool = True  # "full" joins `sizes` (last) when CUDA is present
    lrs: tuple[float, ...] = (3e-4, 1e-3, 3e-3)  # each size's rate is chosen among these
    sweep_fraction: float = 0.25  # of the training records the per-size sweep trains on
    sweep_epochs: int = 4  # of that subset, per candidate rate
    max_steps: int = 400  # the step cap of a point (optimizer steps)
    patience_steps: int = 100  # stop when the validation loss has not improved for this many optimizer steps
    # An epoch improves on the best only when its validation loss is lower by this share of the best: a plateau
    # creeping down by less than the epoch-to-epoch noise would otherwise restart the patience again and again.
    min_improvement: float = 1e-3
    check: tuple[str, ...] = ("tiny:all", "small:all")  # SIZE:DATA points that --check trains with twice the cap
    fit_bootstrap: int = 400  # bootstrap replicates of the fitted curve (residuals resampled over points)
    fit_seed: int = 0


@dataclass(frozen=True)
class RunConfig:
    preset: str = "full"
    data: DataConfig = field(default_factory=DataConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    study: StudyConfig = field(default_factory=StudyConfig)


def _scaled(budgets: dict[str, int], scale: float, floor: int) -> dict[str, int]:
    return {name: size if name == "kalman" else max(floor, round(size * scale)) for name, size in budgets.items()}


PRESETS: dict[str, RunConfig] = {
    # 31 fp32 checkpoints of the 730M model are 90 GB; bf16 halves them (disk plan: `redheart disk`).
    "full": RunConfig(preset="full", train=TrainConfig(checkpoint_dtype="bfloat16", ema_every=16)),
    "small": RunConfig(
        preset="small",
        model=ModelConfig(budgets=_scaled(FULL_BUDGETS, 1 / 400, 20_000), backbone_layers=2, backbone_heads=4),
        # CPU: one micro-batch of 64 gives the strategy's effective batch without accumulation.
        train=TrainConfig(micro_batch=64, accumulation=1),
    ),
    # Between small (1/400, 1.9M parameters) and full: 1/100 of every budget (7.3M parameters, 4x small) and
    # twice small's backbone depth. One epoch costs about 3x small's on 2 CPU cores, so the study's medium
    # points take about half its budget; a larger step would leave no room for more than a couple of epochs.
    "medium": RunConfig(
        preset="medium",
        model=ModelConfig(budgets=_scaled(FULL_BUDGETS, 1 / 100, 20_000), backbone_layers=4, backbone_heads=4),
        train=TrainConfig(micro_batch=64, accumulation=1),
    ),
    # Between medium (7.3M) and full: 1/25 of every budget (29M parameters, 4x medium) and six backbone layers.
    # The study trains it only when asked (`study.sizes` or `--point`): a point costs about 4x a medium one.
    "large": RunConfig(
        preset="large",
        model=ModelConfig(budgets=_scaled(FULL_BUDGETS, 1 / 25, 20_000), backbone_layers=6, backbone_heads=8),
        train=TrainConfig(micro_batch=64, accumulation=1),
    ),
    "tiny": RunConfig(
        preset="tiny",
        encoder=EncoderConfig(name="hashing", dim=32, max_segments=4),
        model=ModelConfig(budgets=_scaled(FULL_BUDGETS, 1 / 20_000, 2_000), backbone_layers=2, backbone_heads=2),
        train=TrainConfig(epochs=4, micro_batch=8, accumulation=2, warmup_epochs=0.2, restart_epochs=2),
        sweep=SweepConfig(lrs=(1e-4, 1e-3), epochs=2, reseed_top=2, extra_seeds=1),
    ),
}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def with_overrides(config: RunConfig, overrides: dict[str, Any] | list[str]) -> RunConfig:
    """Apply overrides such as {"train.lr": 1e-4} or ["train.lr=1e-4"] (values parsed as YAML)."""
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not of the form section.field=value")
            pairs[key.strip()] = _parse_value(value)
        overrides = pairs
    tree = to_dict(config)
    for dotted, value in overrides.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ValueError(f"unknown config section {dotted!r}")
            node = node[part]
        if leaf not in node:
            raise ValueError(f"unknown config field {dotted!r}")
        node[leaf] = value
    return from_dict(tree)


def _parse_value(text: str) -> Any:
    value = yaml.safe_load(text)
    # YAML 1.1 reads "2e-4" (no dot) as a string; a learning rate is the usual victim.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


# Fields that older run folders' config.yaml may still carry and that no longer mean anything.
_RETIRED: dict[str, tuple[str, ...]] = {"study": ("epochs",)}


def from_dict(tree: dict[str, Any]) -> RunConfig:
    # Each section's dataclass is its field's default factory in RunConfig.
    kinds: dict[str, Any] = {
        f.name: f.default_factory for f in dataclasses.fields(RunConfig) if f.default_factory is not dataclasses.MISSING
    }
    unknown = set(tree) - {f.name for f in dataclasses.fields(RunConfig)}
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}")
    built: dict[str, Any] = {}
    for name, value in tree.items():
        if name not in kinds:
            built[name] = value
            continue
        cls = kinds[name]
        names = {f.name for f in dataclasses.fields(cls)}
        # A field that was removed: a run folder written before still loads (its points are refused as stale).
        value = {k: v for k, v in value.items() if k not in _RETIRED.get(name, ())}
        extra = set(value) - names
        if extra:
            raise ValueError(f"unknown fields in config section {name!r}: {sorted(extra)}")
        # YAML has no tuples; restore them where the dataclass default is one.
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        built[name] = cls(**fixed)
    return RunConfig(**built)


def save_config(config: RunConfig, path: Path) -> None:
    with atomic_open(path) as handle:
        yaml.safe_dump(to_dict(config), handle, sort_keys=False)


def load_config(path: Path) -> RunConfig:
    with open(path, encoding="utf-8") as handle:
        return from_dict(yaml.safe_load(handle))
