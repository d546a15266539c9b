"""Out-of-memory recovery: the micro-batch plan that shrinks instead of failing.

An accumulation window is a fixed slice of the epoch's sample order (micro_batch x accumulation of the
config). On an out-of-memory error the window is redone from its start with half the micro-batch and
twice the accumulation, so no sample is skipped and the effective batch is unchanged. At micro-batch 1
the next step is the memory-saving mode (activation checkpointing, R-Drop as two sequential passes);
an error there is final. The plan is part of the resume state, so a resumed run keeps the sizes.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class OutOfMemory(RuntimeError):
    """Even micro-batch 1 in memory-saving mode does not fit on the device."""


@dataclass
class BatchPlan:
    window: int  # samples per optimizer step (the effective batch); never changes
    micro_batch: int
    memory_saving: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accumulation(self) -> int:
        return math.ceil(self.window / self.micro_batch)

    def shrink(self, error: str, where: dict[str, Any]) -> None:
        """Take the next smaller setting after the error message `error` at `where` (epoch, sample), or raise."""
        if self.micro_batch > 1:
            self.micro_batch //= 2
        elif not self.memory_saving:
            self.memory_saving = True
        else:
            raise OutOfMemory(
                f"out of memory at micro-batch 1 even in memory-saving mode (activation checkpointing, "
                f"sequential R-Drop) at {where}: the model does not fit on this device. Use a smaller "
                f"preset or a device with more memory. Last error: {error.splitlines()[0]}"
            )
        self.events.append(
            {
                **where,
                "micro_batch": self.micro_batch,
                "accumulation": self.accumulation,
                "memory_saving": self.memory_saving,
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "micro_batch": self.micro_batch,
            "memory_saving": self.memory_saving,
            "events": list(self.events),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchPlan:
        return cls(data["window"], data["micro_batch"], data["memory_saving"], list(data["events"]))


def release_memory(device: torch.device) -> None:
    """Return the failed step's freed blocks to the device, so the smaller retry starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def step_out_of_memory(error: BaseException, where: dict[str, Any]) -> OutOfMemory:
    """The clear error for an out-of-memory in the optimizer step or the EMA update. A smaller micro-batch frees no
    memory there (the activations are gone by then): the first step allocates the optimizer's moments, for AdamW
    two fp32 copies of the weights, the largest single allocation of a run."""
    return OutOfMemory(
        f"out of memory in the optimizer step or the EMA update at {where}: the weights, gradients and optimizer state "
        "of this memory strategy do not fit on this device. Choose a strategy that keeps less on it "
        "(--set train.memory=saving or swap; `redheart memory --preset PRESET --vram SIZE` prints what each needs), "
        f"a smaller preset, or a device with more memory. Last error: {first_line(error)}"
    )


def with_halving_batches(
    run: Callable[[int], T], batch_size: int, device: torch.device, what: str, retry: bool = True
) -> T:
    """`run(batch_size)`, redone with half the batch size after each out-of-memory error; at batch size 1 (or at once
    without `retry`: under FSDP a rank cannot redo a pass alone) the error becomes OutOfMemory naming `what`. For
    evaluation passes, whose results do not depend on the batch size."""
    while True:
        try:
            return run(batch_size)
        except torch.OutOfMemoryError as error:
            message = first_line(error)  # only the message: the traceback holds the failed batch's tensors
        release_memory(device)
        if batch_size == 1 or not retry:
            raise OutOfMemory(
                f"out of memory in {what} at batch size {batch_size}: the model does not fit on this device for "
                f"evaluation. Use a smaller preset or a device with more memory. Last error: {message}"
            )
        batch_size = max(1, batch_size // 2)
