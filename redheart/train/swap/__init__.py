"""Group-wise swap training: the model in host memory, one module group at a time on the device."""

from redheart.train.swap.cpu_offload import HOST, CpuOffload
from redheart.train.swap.trainer import GroupSwapTrainer

__all__ = ["HOST", "GroupSwapTrainer", "CpuOffload"]
