"""Device memory: the bytes each memory strategy needs, measured activations, and the strategy to train with."""

from redheart.train.memory.activations import ActivationBytes, measure_activation_bytes
from redheart.train.memory.format import format_memory_plan
from redheart.train.memory.plan import (
    MemoryPlan,
    NoStrategyFits,
    parse_bytes,
    plan_for_config,
    plan_memory,
    resolve_strategy,
)
from redheart.train.memory.strategy import STRATEGIES, MemoryStrategy, strategy

__all__ = [
    "STRATEGIES",
    "ActivationBytes",
    "MemoryPlan",
    "MemoryStrategy",
    "NoStrategyFits",
    "format_memory_plan",
    "measure_activation_bytes",
    "parse_bytes",
    "plan_for_config",
    "plan_memory",
    "resolve_strategy",
    "strategy",
]
