"""Memory strategies: where training keeps weights, gradients, optimizer state and the EMA copy.

The full preset holds 730M parameters: fp32 weights, gradients, AdamW's two moments and an EMA copy
come to 13.6 GiB before any activation, so one 8 GB card needs some of these savings. Each strategy is
a fixed bundle, listed from the expected fastest to the leanest; `memory_plan.plan_memory` measures
what each needs for a model and picks the first that fits the device.

- standard: everything on the device; autocast as `train.amp` says.
- saving: bf16 autocast, per-module activation checkpointing (bf16 autocast keeps a bf16 copy of every
  weight for the backward pass, 1.35 GiB for the full model; recomputing module by module holds one
  module's copy at a time), block-wise 8-bit AdamW state (bitsandbytes: 2 bytes per parameter instead
  of 8) and the EMA copy in host memory.
- swap: weights, gradients, fp32 AdamW state and EMA in host memory; one module group at a time on the
  device for its forward and backward, one module at a time for its update (redheart/train/swap/trainer.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryStrategy:
    name: str
    bf16: bool | None  # True: bf16 autocast (fp16 + loss scaling where bf16 is unsupported); None: as train.amp says
    activation_checkpointing: bool  # per top-level module
    optimizer: str  # "adamw" (fp32 moments) or "adamw8bit" (bitsandbytes, block-wise 8-bit moments)
    ema_on_host: bool
    group_swap: bool

    def summary(self) -> str:
        parts = [
            {True: "bf16 autocast", None: "autocast as train.amp says"}[self.bf16],
            "activation checkpointing per module" if self.activation_checkpointing else "no activation checkpointing",
            "8-bit AdamW (bitsandbytes)" if self.optimizer == "adamw8bit" else "fp32 AdamW",
            "EMA in host memory" if self.ema_on_host else "EMA on the device",
        ]
        if self.group_swap:
            parts.append("one module group at a time on the device (one module for its update)")
        return ", ".join(parts)


STRATEGIES: dict[str, MemoryStrategy] = {
    "standard": MemoryStrategy("standard", None, False, "adamw", False, False),
    "saving": MemoryStrategy("saving", True, True, "adamw8bit", True, False),
    "swap": MemoryStrategy("swap", None, False, "adamw", True, True),
}


def strategy(name: str) -> MemoryStrategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown memory strategy {name!r}; choose one of {sorted(STRATEGIES)} or 'auto'")
    return STRATEGIES[name]
