"""Module groups: the unit of checkpointing, sweet-spot selection and parameter crossover."""

from __future__ import annotations

from torch import Tensor, nn

GROUPS: dict[str, list[str]] = {
    "group_a": ["backbone", "emotion_head", "bentham_head", "regret_head", "surd_head", "verdict_head"],
    "group_b": ["neural_emotion", "neural_bentham", "neural_regret", "neural_surd"],
    "advanced_emotion": ["advanced_emotion"],
    "advanced_regret": ["advanced_regret"],
    "advanced_bentham": ["advanced_bentham"],
    "advanced_surd": ["advanced_surd"],
    "group_c": ["dsp", "kalman"],
    "phase": ["phase0_calibrator", "phase1_empathy", "phase2_community"],
}


def group_of(module: str) -> str:
    for group, modules in GROUPS.items():
        if module in modules:
            return group
    raise KeyError(f"module {module!r} belongs to no group; groups: {GROUPS}")


def _check_group(group: str) -> list[str]:
    if group not in GROUPS:
        raise KeyError(f"unknown group {group!r}; choose one of {sorted(GROUPS)}")
    return GROUPS[group]


def group_state_dict(model: nn.Module, group: str) -> dict[str, Tensor]:
    """The group's parameters and buffers, keyed as in model.state_dict() (e.g. "backbone.input.weight")."""
    prefixes = tuple(f"{m}." for m in _check_group(group))
    return {k: v for k, v in model.state_dict().items() if k.startswith(prefixes)}


def load_group_state_dict(model: nn.Module, group: str, state: dict[str, Tensor]) -> None:
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
