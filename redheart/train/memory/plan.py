"""The memory plan: bytes each strategy puts on the device and in host memory, and the one to train with.

Sizes come from the real model: parameter counts and dtypes from the model built on the meta device,
optimizer state from the optimizers' own layouts (fp32 AdamW: two fp32 moments; bitsandbytes 8-bit
AdamW: two uint8 moments plus one fp32 absmax per 256-value block, fp32 moments for tensors under 4,096
values), activations measured by `activation_bytes`. The device budget is the card's memory less a
reserve for the CUDA context and allocator fragmentation, which torch.cuda.max_memory_allocated does not
count. Strategies are tried from the fastest (memory_strategy.STRATEGIES order); the first that fits wins.

The activations are measured under CPU autocast; on CUDA layer norm and softmax keep fp32 outputs, cuDNN
takes workspaces and the allocator rounds and caches blocks, so the device may hold more. A measured
correction (a JSON file that bench/gpu_check.py writes, read by `redheart memory --correction FILE`) replaces
a strategy's planned total by the bytes the allocator reserved when that strategy trained on a real card, as
a "correction" component beside the others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from redheart.config import RunConfig
from redheart.core.atomic import write_json
from redheart.model.groups import GROUPS
from redheart.model.model import RedHeartModel
from redheart.train.memory.activations import ActivationBytes, empty_model, measure_activation_bytes
from redheart.train.memory.strategy import STRATEGIES, MemoryStrategy, strategy

GiB = 2**30
# Decimal units as written; a bare K, M or G means the binary unit, as card sizes are meant.
_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "k": 2**10,
    "kib": 2**10,
    "m": 2**20,
    "mib": 2**20,
    "g": 2**30,
    "gib": 2**30,
}
_MIN_8BIT_SIZE = 4096  # bitsandbytes: smaller tensors keep fp32 moments
_BLOCK = 256  # bitsandbytes: values per absmax scale in the block-wise 8-bit state
_QMAPS = 2 * 256 * 4  # the two shared 256-entry fp32 quantisation maps
DEFAULT_RESERVE = GiB // 2
COMPONENTS = ("weights", "gradients", "optimizer", "ema", "activations")


class NoStrategyFits(RuntimeError):
    """The plan finds no memory strategy whose bytes fit the device, before any training step has run."""


def parse_bytes(text: str) -> int:
    """'8GiB', '8 GB', '7.5G' (G = GiB), '8589934592' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {text!r} as a memory size; write e.g. 8GiB, 8GB or 8589934592")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def optimizer_state_bytes(params: list[nn.Parameter], kind: str) -> int:
    """Bytes of the optimizer state once every parameter has taken a step (fused AdamW keeps step as a tensor)."""
    if kind == "adamw":
        return sum(2 * p.numel() * 4 + 4 for p in params)
    if kind == "adamw8bit":
        total = _QMAPS if any(p.numel() >= _MIN_8BIT_SIZE for p in params) else 0
        for p in params:
            n = p.numel()
            total += 2 * n + 2 * 4 * math.ceil(n / _BLOCK) if n >= _MIN_8BIT_SIZE else 2 * 4 * n
        return total
    raise ValueError(f"unknown optimizer {kind!r}; expected 'adamw' or 'adamw8bit'")


@dataclass(frozen=True)
class Footprint:
    strategy: MemoryStrategy
    device: dict[str, int]  # component -> bytes on the device at the peak
    host: dict[str, int]  # component -> bytes held in host memory for the device's sake
    note: str

    @property
    def device_total(self) -> int:
        return sum(self.device.values())

    @property
    def planned_total(self) -> int:
        """The device bytes as planned, without a measured correction."""
        return sum(size for name, size in self.device.items() if name != "correction")

    @property
    def host_total(self) -> int:
        return sum(self.host.values())


@dataclass(frozen=True)
class MemoryPlan:
    preset: str
    parameters: int
    micro_batch: int
    rows: int  # forward rows per micro-step (micro-batch, doubled by R-Drop's concatenated batch)
    vram: int
    reserve: int
    footprints: list[Footprint]
    chosen: str | None  # None: nothing fits
    correction: MemoryCorrection | None = None  # the measured correction applied, if any

    @property
    def budget(self) -> int:
        return self.vram - self.reserve

    def footprint(self, name: str) -> Footprint:
        return next(f for f in self.footprints if f.strategy.name == name)


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _params(model: nn.Module, modules: Sequence[str]) -> list[nn.Parameter]:
    return [p for name in modules for p in getattr(model, name).parameters()]


def footprints(model: nn.Module, config: RunConfig, activations: dict[bool, ActivationBytes]) -> list[Footprint]:
    """Each strategy's bytes; `activations[bf16]` is the measurement under that precision."""
    params = list(model.parameters())
    weights = _nbytes(params)
    buffers = _nbytes(model.buffers())
    ema = weights + buffers if config.train.ema_decay > 0 else 0
    out = []
    for s in STRATEGIES.values():
        bf16 = config.train.amp if s.bf16 is None else s.bf16
        act = activations[bf16]
        optimizer = optimizer_state_bytes(params, s.optimizer)
        if s.group_swap:
            # The device holds one group's weights, gradients and activations for its forward and backward
            # passes, then one module's weights, gradients and optimizer state for its update; everything
            # lives in host memory between turns. The peak is the larger of the two turns.
            turns = {}
            for group, modules in GROUPS.items():
                group_weights = _nbytes(_params(model, modules))
                turns[f"forward and backward of {group}"] = {
                    "weights": group_weights,
                    "gradients": group_weights,
                    "optimizer": 0,
                    "ema": 0,
                    "activations": act.of(modules) + act.inputs + act.per_module["other"],
                }
                for name in modules:
                    module_params = _params(model, [name])
                    module_weights = _nbytes(module_params)
                    turns[f"update of {name}"] = {
                        "weights": module_weights,
                        "gradients": module_weights,
                        "ema": 0,
                        "optimizer": optimizer_state_bytes(module_params, s.optimizer),
                        "activations": 0,
                    }
            largest = max(turns, key=lambda turn: sum(turns[turn].values()))
            host = {"weights": weights, "gradients": weights, "optimizer": optimizer, "ema": ema, "activations": 0}
            out.append(Footprint(s, turns[largest], host, f"largest turn: {largest}"))
            continue
        activation = act.checkpointed if s.activation_checkpointing else act.total
        device = {
            "weights": weights + buffers,
            "gradients": weights,
            "optimizer": optimizer,
            "ema": 0 if s.ema_on_host else ema,
            "activations": activation,
        }
        host = {name: 0 for name in COMPONENTS} | ({"ema": ema} if s.ema_on_host else {})
        out.append(Footprint(s, device, host, "bf16 activations" if bf16 else "fp32 activations"))
    return out


def fsdp_footprint(
    model: RedHeartModel, config: RunConfig, act: ActivationBytes, processes: int, accumulate_unsharded: bool
) -> Footprint:
    """Per process under FSDP (parallel/fsdp.py, the standard strategy): 1/N of the weights, gradients, AdamW
    state and EMA, plus one module gathered whole at a time; with `accumulate_unsharded`, where a process runs
    more than one micro-step a window, the whole model's unsharded fp32 gradients, which accumulate between
    the window's micro-steps until its last backward reduce-scatters them (else one module's, in its backward)."""
    params = list(model.parameters())
    weights = _nbytes(params)
    ema = weights if config.train.ema_decay > 0 else 0
    largest = max(_nbytes(_params(model, [name])) for name in model.module_names)
    accumulates = accumulate_unsharded and config.train.accumulation > processes
    device = {
        "weights": weights // processes + largest,
        "gradients": weights // processes + (weights if accumulates else largest),
        "optimizer": optimizer_state_bytes(params, "adamw") // processes,
        "ema": ema // processes,
        "activations": act.total,
    }
    sync = (
        "gradients accumulate unsharded until the window's last micro-step"
        if accumulates
        else "gradients reduce-scattered after every micro-step"
    )
    note = f"FSDP over {processes} processes, per process; the largest module is gathered whole in its turn; {sync}"
    return Footprint(STRATEGIES["standard"], device, {name: 0 for name in COMPONENTS}, note)


def fsdp_choice(
    model: RedHeartModel, config: RunConfig, act: ActivationBytes, processes: int, budget: int | None
) -> tuple[Footprint, bool]:
    """The FSDP footprint training takes, and whether it syncs gradients once per window (the least
    communication; where that fits `budget`, None meaning host memory, not planned) rather than after every
    micro-step (no unsharded accumulation)."""
    once = fsdp_footprint(model, config, act, processes, accumulate_unsharded=True)
    if budget is None or once.device_total <= budget:
        return once, True
    every = fsdp_footprint(model, config, act, processes, accumulate_unsharded=False)
    return replace(
        every, note=f"{every.note}: syncing once per window would need {once.device_total / GiB:.2f} GiB"
    ), False


def fsdp_accumulates_unsharded(model: RedHeartModel, config: RunConfig, device: torch.device, processes: int) -> bool:
    """Whether FSDP training on `device` accumulates a window's gradients unsharded and syncs once per window."""
    vram = device_memory(device)
    if vram is None:
        return True
    act = measure_activation_bytes(model, _rows(config), config.train.amp)
    return fsdp_choice(model, config, act, processes, vram - DEFAULT_RESERVE)[1]


def _rows(config: RunConfig) -> int:
    """Forward rows per micro-step: the micro-batch, doubled by R-Drop's concatenated batch."""
    return config.train.micro_batch * (2 if config.train.rdrop_alpha > 0 else 1)


def plan_memory(
    model: RedHeartModel,
    config: RunConfig,
    vram: int,
    reserve: int,
    processes: int = 1,
    correction: MemoryCorrection | None = None,
) -> MemoryPlan:
    """The plan for `model` (on the host; uninitialised weights will do) at the config's micro-batch; with
    `processes` > 1 the FSDP footprint per process (only the standard strategy combines with FSDP); with
    `correction`, the measured bytes of the strategies it covers."""
    rows = _rows(config)
    if processes > 1:
        act = measure_activation_bytes(model, rows, config.train.amp)
        prints = [fsdp_choice(model, config, act, processes, vram - reserve)[0]]
    else:
        precisions = {config.train.amp if s.bf16 is None else s.bf16 for s in STRATEGIES.values()}
        activations = {bf16: measure_activation_bytes(model, rows, bf16) for bf16 in sorted(precisions)}
        prints = footprints(model, config, activations)
    if correction is not None:
        prints = correction.apply(prints, config, processes)
    chosen = next((f.strategy.name for f in prints if f.device_total <= vram - reserve), None)
    return MemoryPlan(
        preset=config.preset,
        parameters=sum(p.numel() for p in model.parameters()),
        micro_batch=config.train.micro_batch,
        rows=rows,
        vram=vram,
        reserve=reserve,
        footprints=prints,
        chosen=chosen,
        correction=correction,
    )


def plan_for_config(
    config: RunConfig, vram: int, reserve: int, processes: int = 1, correction: MemoryCorrection | None = None
) -> MemoryPlan:
    """The plan for the model `config` describes, at the encoder's input size; no weights are initialised."""
    model = empty_model(config, config.encoder.dim, config.encoder.max_segments)
    return plan_memory(model, config, vram, reserve, processes, correction)


CORRECTION_FORMAT = "redheart-memory-correction"


@dataclass(frozen=True)
class MemoryCorrection:
    """Bytes measured on a CUDA device per strategy, for one preset at one micro-batch (forward rows)."""

    path: Path
    device: str  # the card it was measured on, as torch names it
    preset: str
    micro_batch: int
    rows: int
    measured: dict[str, int]  # strategy -> max_memory_reserved while it trained
    planned: dict[str, int]  # strategy -> the plan's device bytes at the time (for the record)

    def describe(self) -> str:
        return (
            f"measured correction {self.path} ({self.device}, preset {self.preset}, micro-batch {self.micro_batch}): "
            + ", ".join(f"{name} {size / GiB:.2f} GiB" for name, size in self.measured.items())
        )

    def apply(self, prints: list[Footprint], config: RunConfig, processes: int) -> list[Footprint]:
        """The footprints with each measured strategy's total replaced by the measurement (the difference as a
        "correction" component); a correction for another preset, micro-batch or process count is refused."""
        rows = config.train.micro_batch * (2 if config.train.rdrop_alpha > 0 else 1)
        if processes > 1:
            raise ValueError(f"{self.path}: a correction is measured for one process; this plan is for {processes}")
        if (self.preset, self.micro_batch, self.rows) != (config.preset, config.train.micro_batch, rows):
            raise ValueError(
                f"{self.path}: measured for preset {self.preset} at micro-batch {self.micro_batch} ({self.rows} "
                f"forward rows); this plan is for preset {config.preset} at micro-batch {config.train.micro_batch} "
                f"({rows} rows). Measure again with: python bench/gpu_check.py OUT --micro-batch "
                f"{config.train.micro_batch}"
            )
        out = []
        for footprint in prints:
            measured = self.measured.get(footprint.strategy.name)
            if measured is None:
                out.append(footprint)
                continue
            device = {**footprint.device, "correction": measured - footprint.device_total}
            note = f"{footprint.note}; corrected to the {measured / GiB:.2f} GiB reserved on {self.device}"
            out.append(replace(footprint, device=device, note=note))
        return out


def read_correction(path: Path) -> MemoryCorrection:
    """A correction file as bench/gpu_check.py writes it; anything else is an error naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"{path}: cannot read the memory correction ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: the memory correction is not valid JSON ({error})") from None
    if not isinstance(data, dict) or data.get("format") != CORRECTION_FORMAT:
        raise ValueError(f"{path}: not a memory correction (field 'format' must be {CORRECTION_FORMAT!r})")

    def field(name: str, kind: type) -> Any:
        value = data.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{path}: field {name!r} must be a {kind.__name__}, got {value!r}")
        return value

    strategies = field("strategies", dict)
    measured, planned = {}, {}
    for name, row in strategies.items():
        if name not in STRATEGIES:
            raise ValueError(
                f"{path}: strategies.{name}: unknown memory strategy; expected one of {sorted(STRATEGIES)}"
            )
        for key in ("measured_bytes", "planned_bytes"):
            value = row.get(key) if isinstance(row, dict) else None
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{path}: strategies.{name}.{key} must be a positive integer, got {value!r}")
        measured[name], planned[name] = row["measured_bytes"], row["planned_bytes"]
    return MemoryCorrection(
        path=path,
        device=field("device", str),
        preset=field("preset", str),
        micro_batch=field("micro_batch", int),
        rows=field("rows", int),
        measured=measured,
        planned=planned,
    )


def write_correction(path: Path, plan: MemoryPlan, device: str, measured: dict[str, int]) -> None:
    """The correction file of `plan`'s preset and micro-batch: what each strategy in `measured` reserved."""
    write_json(
        Path(path),
        {
            "format": CORRECTION_FORMAT,
            "device": device,
            "preset": plan.preset,
            "micro_batch": plan.micro_batch,
            "rows": plan.rows,
            "strategies": {
                name: {"measured_bytes": int(size), "planned_bytes": plan.footprint(name).planned_total}
                for name, size in measured.items()
            },
        },
    )


def device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device; None elsewhere (host memory is not planned)."""
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory


def resolve_strategy(
    model: RedHeartModel, config: RunConfig, device: torch.device, sharded: bool = False
) -> MemoryStrategy:
    """config.train.memory, or for "auto" the plan's choice for `device` (standard off CUDA: host memory is
    not planned).

    `sharded` (FSDP, parallel/fsdp.py): only "standard"; sharding is the saving, and the plan counts whole tensors.
    """
    if sharded and config.train.memory not in ("auto", "standard"):
        raise ValueError(
            f"memory strategy {config.train.memory!r} cannot be combined with FSDP (train.distributed); "
            "set train.memory to 'standard' or 'auto', or train.distributed to 'ddp'"
        )
    if config.train.memory != "auto":
        return strategy(config.train.memory)
    vram = device_memory(device)
    if vram is None or sharded:
        return STRATEGIES["standard"]
    plan = plan_memory(model, config, vram, DEFAULT_RESERVE)
    if plan.chosen is None:
        raise NoStrategyFits(
            f"no memory strategy fits {device} ({vram / GiB:.2f} GiB) for preset {config.preset} at micro-batch "
            f"{config.train.micro_batch}; `redheart memory --preset {config.preset} --vram {vram / GiB:.1f}GiB` "
            "shows why"
        )
    return STRATEGIES[plan.chosen]
