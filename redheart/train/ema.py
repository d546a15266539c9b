"""Exponential moving average of the weights (an AveragedModel, so its state has torch's layout), updated
every `every` optimizer steps with the decay raised to the steps it covers.

Per step the EMA is e <- d e + (1 - d) w. Every k steps, e <- d^k e + (1 - d^k) w_k is the same where the
weights did not move in between, and otherwise differs by (1 - d) sum_{j<k} d^j (w_{t-j} - w_t): weights
drifting by delta per step give at most (1 - d) delta sum_{j<k} j d^j, against the EMA's own lag of about
delta d / (1 - d) (tests/test_ema.py checks both). That buys a lot when the EMA lives in host memory beside
a model on the GPU: the full model's 2.9 GB cross the bus once per k steps instead of once per step, in
chunks through pinned memory (asynchronous copies, one wait per chunk), and the host's lerp runs as often.

Steps not yet averaged are counted in a buffer of the module (`pending_steps`), so they are part of the
resume state; `flush` averages them in before the EMA is read (validation, checkpoints). A Python copy of
the count (and of "averaged at least once") avoids reading a device tensor per step, which would wait for
the GPU.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

# Bytes per pinned staging chunk of a host-side update: bounded pinned memory, one wait per chunk.
STAGING_BYTES = 256 * 2**20


class EMA(AveragedModel):
    """An EMA copy of `model` on `device` (default: where the model is), averaged every `every` steps."""

    pending_steps: Tensor
    n_averaged: Tensor

    def __init__(self, model: nn.Module, decay: float, device: torch.device | None = None, every: int = 1) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"train.ema_decay is {decay}; an EMA needs a decay in (0, 1)")
        if every < 1:
            raise ValueError(f"train.ema_every is {every}; it must be 1 or more optimizer steps")
        super().__init__(model, device=device, use_buffers=True)
        self.decay, self.every = decay, every
        self.register_buffer("pending_steps", torch.zeros((), dtype=torch.long, device=self.n_averaged.device))
        self._pending = 0
        self._averaged = False
        self.register_load_state_dict_post_hook(_read_counts)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A state saved before the count existed averaged every step: nothing pending.
        state_dict.setdefault(f"{prefix}pending_steps", torch.zeros((), dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def update_parameters(self, model: nn.Module) -> None:
        """One optimizer step: averaged in now when `every` steps are pending, else counted."""
        self._pending += 1
        if self._pending >= self.every:
            self.flush(model)
        else:
            self.pending_steps.fill_(self._pending)

    @torch.no_grad()
    def flush(self, model: nn.Module) -> None:
        """Average the pending steps in: e <- d^k e + (1 - d^k) w (the first update copies w, as torch's does)."""
        if self._pending == 0:
            return
        weight = 1.0 if not self._averaged else 1.0 - self.decay**self._pending
        pairs = list(
            zip(
                itertools.chain(self.module.parameters(), self.module.buffers()),
                itertools.chain(model.parameters(), model.buffers()),
            )
        )
        for targets, sources in _staged(pairs):
            floating = [(t, s) for t, s in zip(targets, sources) if t.is_floating_point()]
            if weight == 1.0 or not floating:
                for target, source in zip(targets, sources):
                    target.detach().copy_(source)
                continue
            torch._foreach_lerp_([t.detach() for t, _ in floating], [s for _, s in floating], weight)
            for target, source in zip(targets, sources):
                if not target.is_floating_point():
                    target.detach().copy_(source)
        self.n_averaged += 1
        self._pending, self._averaged = 0, True
        self.pending_steps.fill_(0)


def _read_counts(module: nn.Module, incompatible: Any) -> None:
    """After a state is loaded: the Python copies of the counts (one read of each tensor)."""
    ema = module if isinstance(module, EMA) else None
    if ema is not None:
        ema._pending = int(ema.pending_steps)
        ema._averaged = bool(ema.n_averaged > 0)


def _staged(pairs: list[tuple[Tensor, Tensor]]) -> Iterator[tuple[list[Tensor], list[Tensor]]]:
    """(EMA tensors, the model's values on their device) in chunks. From a GPU to host memory the values go
    through one pinned buffer per chunk by asynchronous copies, then one wait; elsewhere they are copied (or
    used in place) tensor by tensor."""
    chunk: list[tuple[Tensor, Tensor]] = []
    size = 0
    for target, source in pairs:
        crossing = source.device.type == "cuda" and target.device.type == "cpu"
        if not crossing:
            yield [target], [source.detach().to(target.device)]
            continue
        chunk.append((target, source))
        size += source.numel() * source.element_size()
        if size >= STAGING_BYTES:
            yield _through_pinned(chunk)
            chunk, size = [], 0
    if chunk:
        yield _through_pinned(chunk)


def _through_pinned(chunk: list[tuple[Tensor, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    sources = []
    for _, source in chunk:
        host = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)  # cached by torch's host allocator
        host.copy_(source.detach(), non_blocking=True)
        sources.append(host)
    torch.cuda.current_stream(chunk[0][1].device).synchronize()  # the copies are complete before the host reads
    return [target for target, _ in chunk], sources


def build_ema(model: nn.Module, decay: float, device: torch.device | None = None, every: int = 1) -> EMA | None:
    """An EMA copy updated by `ema.update_parameters(model)` after every optimizer step; None when decay is 0.

    `device` keeps the copy elsewhere than the model (host memory, to spare the GPU): build it while the
    model is still on the host, or the copy is first made on the device.
    """
    if decay <= 0:
        return None
    return EMA(model, decay, device=device, every=every)
