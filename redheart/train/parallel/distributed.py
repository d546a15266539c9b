"""Several processes training one model under torchrun: who this process is, the process group, the collectives.

`torchrun --nproc_per_node N -m redheart -- train --run R` starts N processes with WORLD_SIZE, RANK and
LOCAL_RANK set; without them (or with WORLD_SIZE 1) there is one process and nothing here communicates.
(The `--` is needed on Python 3.11: torchrun's argument parser otherwise reads `--run` as an abbreviation
of its own `--run-path`.) The backend is gloo on CPU and nccl on CUDA, where each process trains on
cuda:LOCAL_RANK. Multi-node: the same command on every node with --nnodes, --node_rank and a rendezvous.

Gradients are summed by an explicit all_reduce once per accumulation window (data_parallel.py), not by
torch.nn.parallel.DistributedDataParallel: in a short last window some ranks run fewer micro-steps than
others, or none, and DDP's per-backward hooks need every rank in every backward (or join() with shadow
collectives); one all_reduce after the window only needs every rank to reach the window's end. It also
keeps the model a plain module, so its `losses` and `consistency` methods stay callable. The price is
that the reduction does not overlap the last backward of the window, once per optimizer step.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from redheart.train.precision import resolve_device
from redheart.train.signals import StopRequest

# Gradients travel in flat buckets of about this size: one collective per tensor is slow for
# hundreds of small tensors, one for the whole model would double its gradient memory.
BUCKET_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; with world_size 1 every collective returns its input."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device  # where this process trains; collectives use it too (gloo: CPU, nccl: CUDA)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and shows progress."""
        return self.rank == 0

    @classmethod
    def single(cls, device: torch.device) -> Distributed:
        return cls(rank=0, world_size=1, local_rank=0, device=device)

    def barrier(self) -> None:
        if self.world_size == 1:
            return
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def max_ints(self, values: list[int]) -> list[int]:
        """The element-wise maximum over the ranks (flags: any rank set it)."""
        if self.world_size == 1:
            return [int(v) for v in values]
        tensor = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def sum_values(self, values: list[torch.Tensor | float]) -> torch.Tensor:
        """The sum over the ranks of each value, in float64 (loss sums), as a 1-d tensor on the device."""
        tensor = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in values])
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def sum_in_place(self, tensors: list[torch.Tensor]) -> None:
        """Replace every tensor (gradients) by its sum over the ranks; all ranks pass the same shapes in the
        same order."""
        if self.world_size == 1:
            return
        for bucket in _buckets(tensors):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.all_reduce(flat)
            for tensor, part in zip(bucket, flat.split([t.numel() for t in bucket])):
                tensor.copy_(part.view_as(tensor))

    def union(self, names: list[str]) -> list[str]:
        """The sorted union of every rank's names."""
        if self.world_size == 1:
            return sorted(set(names))
        gathered: list[list[str] | None] = [None] * self.world_size
        dist.all_gather_object(gathered, names)
        return sorted({name for part in gathered for name in part or []})

    def agree_on_stop(self, request: StopRequest) -> None:
        """Each rank gets SIGINT/SIGTERM on its own; all adopt the highest signal any got, so all stop together."""
        agreed = self.max_ints([request.signum or 0])[0]
        if agreed and not request.requested:
            request.signum = agreed


def _buckets(tensors: list[torch.Tensor]) -> Iterator[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and (size + tensor.numel() * tensor.element_size() > BUCKET_BYTES or tensor.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel() * tensor.element_size()
    if bucket:
        yield bucket


@contextmanager
def join_job(device_name: str, environ: Mapping[str, str] = os.environ) -> Iterator[Distributed]:
    """The process group of the torchrun job this process belongs to, left when the block ends.

    `device_name` is train.device; an index-less CUDA device ("auto" on a GPU machine, "cuda") becomes
    cuda:LOCAL_RANK, so each process on a node gets its own GPU. An explicit index (cuda:N) with several processes
    is refused: it would put every process on GPU N, where nccl fails.
    """
    world_size = int(environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world_size == 1:
        yield Distributed.single(device)
        return
    if device.type == "cuda" and device.index is not None:
        raise ValueError(
            f"train.device is {device_name!r} but torchrun started {world_size} processes, which would all use GPU "
            f"{device.index}; set train.device=cuda (or auto) so each process takes the GPU of its LOCAL_RANK, and "
            "choose the GPUs with CUDA_VISIBLE_DEVICES"
        )
    missing = [name for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if name not in environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; start the processes with torchrun"
        )
    rank, local_rank = int(environ["RANK"]), int(environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=rank, world_size=world_size, device_id=device if device.type == "cuda" else None
    )
    try:
        yield Distributed(rank=rank, world_size=world_size, local_rank=local_rank, device=device)
    finally:
        dist.destroy_process_group()
