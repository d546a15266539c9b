"""Parameters, gradients and optimizer state that live in host memory and visit the device one part at a time.

Each tensor keeps one host copy for the whole run (pinned on CUDA, so the copies to the device can run
asynchronously and no host memory is allocated per visit); a visit swaps the tensor's data for a device
copy and back, so Parameter objects, and with them the optimizer's state keys, never change. When the
device is the host (CPU) every move is a no-op.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

HOST = torch.device("cpu")


class CpuOffload:
    """The host copies of a model's tensors, and the moves of a part of them to `device` and back."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.active = device.type != HOST.type
        self.pin = device.type == "cuda"
        # Host copies of the tensors now on the device, and of each parameter's gradient and optimizer state.
        self._homes: dict[Tensor, Tensor] = {}
        self._grad_homes: dict[Tensor, Tensor] = {}
        self._state_homes: dict[tuple[int, str], Tensor] = {}

    def _park(self, value: Tensor, home: Tensor | None) -> Tensor:
        """`value` copied into `home`, or into a new (pinned) host tensor where `home` cannot take it."""
        if home is None or home.shape != value.shape or home.dtype != value.dtype or home.is_pinned() != self.pin:
            home = torch.empty(value.shape, dtype=value.dtype, device=HOST, pin_memory=self.pin)
        home.copy_(value)  # blocking: the host copy is complete when this returns
        return home

    def settle(self, module: nn.Module) -> None:
        """Put every parameter and buffer of `module` in (pinned) host memory, where it lives between visits."""
        if not self.active:
            return
        for tensor in (*module.parameters(), *module.buffers()):
            tensor.data = self._park(tensor.data, None)

    def visit(self, modules: list[nn.Module]) -> None:
        """Bring parameters and buffers (and gradients, as after a resume mid-window) to the device."""
        if not self.active:
            return
        for module in modules:
            for tensor in (*module.parameters(), *module.buffers()):
                on_device = tensor.data.to(self.device, non_blocking=True)
                self._homes[tensor], tensor.data = tensor.data, on_device
            for param in module.parameters():
                if param.grad is not None:
                    param.grad = param.grad.to(self.device, non_blocking=True)

    def leave(self, modules: list[nn.Module], updated: bool) -> None:
        """Send parameters and buffers home; parameter values are copied back only when `updated`.

        Gradients must have been taken (`take_grads`) or dropped first. Tensors already home are left
        alone, so a visit cut short by an out-of-memory error can be undone.
        """
        if not self.active:
            return
        for module in modules:
            for param in module.parameters():
                home = self._homes.pop(param, None)
                if home is not None:
                    param.data = self._park(param.data, home) if updated else home
            for buffer in module.buffers():
                home = self._homes.pop(buffer, None)
                if home is not None:
                    buffer.data = self._park(buffer.data, home)

    def take_grads(self, params: list[nn.Parameter]) -> list[Tensor | None]:
        """Detach the gradients from `params`, as host tensors."""
        grads = []
        for param in params:
            grad, param.grad = param.grad, None
            if grad is not None and self.active:
                grad = self._grad_homes[param] = self._park(grad, self._grad_homes.get(param))
            grads.append(grad)
        return grads

    def give_grads(self, params: list[nn.Parameter], grads: list[Tensor | None]) -> None:
        """Attach host gradients to `params` (on the device the parameters are on now)."""
        for param, grad in zip(params, grads):
            param.grad = None if grad is None else grad.to(param.device, non_blocking=True)

    def visit_state(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        """Bring the optimizer state of `params` to the device (state made by the first step is made there)."""
        for state, key, value, home in self._state_tensors(optimizer, params):
            self._state_homes[home] = value
            state[key] = value.to(self.device, non_blocking=True)

    def leave_state(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        for state, key, value, home in self._state_tensors(optimizer, params):
            state[key] = self._state_homes[home] = self._park(value, self._state_homes.get(home))

    def _state_tensors(
        self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]
    ) -> Iterator[tuple[dict[str, Any], str, Tensor, tuple[int, str]]]:
        """(state dict, key, tensor, home key) of every state tensor of `params`; none when nothing moves."""
        if not self.active:
            return
        for param in params:
            state = optimizer.state.get(param, {})
            for key, value in list(state.items()):
                if isinstance(value, Tensor):
                    yield state, key, value, (id(param), key)
