"""Training with several processes under torchrun: the process group, data-parallel windows, FSDP sharding."""

from redheart.train.parallel.data_parallel import DataParallelTrainer, window_seed
from redheart.train.parallel.distributed import Distributed, join_job
from redheart.train.parallel.fsdp import drop_summed_grads, host_view, is_sharded, shard, uses_fsdp

__all__ = [
    "DataParallelTrainer",
    "Distributed",
    "drop_summed_grads",
    "host_view",
    "is_sharded",
    "join_job",
    "shard",
    "uses_fsdp",
    "window_seed",
]
