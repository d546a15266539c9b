"""Mixed precision per device: bf16 autocast where the CUDA device runs bf16 natively (compute capability 8.0
and up, or ROCm), else fp16 with a GradScaler.

On CPU autocast is off: CPU bf16 autocast is slower than fp32 on most CPUs without AMX and changes the
numerics that the CPU tests rely on (exact resume, accumulation equivalence), for no memory gain worth it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    device: torch.device
    dtype: torch.dtype | None  # None: full fp32
    # Autocast caches the low-precision copy of every weight until the context exits: 1.35 GiB for the
    # full model, held through the whole forward even when activation checkpointing frees the rest.
    cache_weight_casts: bool = True

    def autocast(self) -> AbstractContextManager:
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, cache_enabled=self.cache_weight_casts)

    def scaler(self) -> torch.amp.GradScaler:
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none.
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def choose_precision(
    device: torch.device, amp: bool, force_autocast: bool = False, cache_weight_casts: bool = True
) -> Precision:
    """`force_autocast` (a memory strategy's demand) turns autocast on, on CPU too."""
    if not force_autocast and (not amp or device.type != "cuda"):
        return Precision(device, None)
    bf16 = device.type != "cuda" or native_bf16(device)
    return Precision(device, torch.bfloat16 if bf16 else torch.float16, cache_weight_casts)


def native_bf16(device: torch.device) -> bool:
    """Whether the CUDA device computes in bf16 natively. torch.cuda.is_bf16_supported() also counts emulation,
    which pre-Ampere cards (a T4, compute capability 7.5) offer at a fraction of their fp16 speed."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(device) >= (8, 0)
