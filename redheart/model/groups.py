"""Module groups: the unit of checkpointing, sweet-spot selection and parameter crossover.

The groups and their members are the architecture's declarations (ModuleSpec.group); a model's own groups
(`RedHeartModel.groups`) are those of the modules it was built with.
"""

from __future__ import annotations

from torch import Tensor

from redheart.architecture import module_groups
from redheart.model.model import RedHeartModel

GROUPS: dict[str, tuple[str, ...]] = module_groups()


def _check_group(model: RedHeartModel, group: str) -> tuple[str, ...]:
    if group not in model.groups:
        raise KeyError(f"unknown group {group!r}; choose one of {sorted(model.groups)}")
    return model.groups[group]


def group_state_dict(model: RedHeartModel, group: str) -> dict[str, Tensor]:
    """The group's parameters and buffers, keyed as in model.state_dict() (e.g. "backbone.input.weight")."""
    prefixes = tuple(f"{m}." for m in _check_group(model, group))
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def load_group_state_dict(model: RedHeartModel, group: str, state: dict[str, Tensor]) -> None:
    """Load one group strictly: every key present, no extra key, every shape equal; else ValueError naming them."""
    expected = group_state_dict(model, group)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(
            f"group {group!r}: state dict is missing keys {missing[:5]} and has unexpected keys {extra[:5]}"
            f" ({len(missing)} missing, {len(extra)} unexpected)"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"group {group!r}: key {key!r} has shape {tuple(tensor.shape)},"
                f" the model expects {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
