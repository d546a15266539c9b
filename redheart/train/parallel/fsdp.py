"""FSDP (torch.distributed.fsdp.fully_shard, "FSDP2"): each of N processes holds 1/N of the weights, the
gradients, the AdamW moments and the EMA copy, so the full preset trains on cards that cannot hold it whole.

Used under torchrun with train.distributed "fsdp", or "auto" with the full preset (uses_fsdp). The training
arithmetic is that of DDP (data_parallel.py): ranks run their share of every window's micro-batches, each
weighted by its share of the window, and the gradients are summed over the ranks. Here FSDP sums them
itself (a reduce-scatter after every micro-step's backward): every forward and backward gathers weights
from all ranks, so every rank runs the same number of micro-steps, some of weight 0 (data_parallel.py).

Layout choices:
- Each top-level module of RedHeartModel (RedHeartModel.module_names) is one FSDP unit, the model itself the root;
  the root resharding after forward too means every parameter is sharded whenever no forward or backward
  runs: after evaluation (a forward without backward) as after a step.
- Gradients are summed, not averaged (divide factor 1, sum-only collectives: gloo has no AVG or
  PREMUL_SUM): each micro-step's loss already carries its share of the window.
- Under bf16 (train.amp on a GPU with bf16) the weights are gathered in bf16 (MixedPrecisionPolicy
  param_dtype), half the bytes of every gather; gradients are reduced and accumulated in fp32 (reduce_dtype):
  with the sync off FSDP accumulates a window's gradients in the reduce dtype, and bf16's 8-bit mantissa
  would round every one of the window's additions (up to accumulation x 2^-8 relative), while the reduction
  itself now happens once per window. The EMA copy keeps fp32 gathers: it is only evaluated.
- fully_shard refuses 0-d parameters (two scalar temperatures); they stay whole on every rank, and their
  gradients are summed by the explicit all_reduce of data_parallel.py, as under DDP.
- The EMA (AveragedModel) copies the model before sharding and is sharded the same way, so its shards
  line up with the model's: an update is a local lerp on every rank, with no communication and 1/N of the
  memory. Evaluating it is a forward over all ranks; every rank evaluates, as for the model.

Saved state is full and rank-count independent: weights, EMA, gradients and optimizer state are gathered
to rank 0's host memory (every rank takes part: the gathers are collectives) and written in the layout one
process writes; loading reads the full tensors on every rank and keeps each rank's shard. So a state
saved by any number of processes, sharded or not, resumes with any other.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim.swa_utils import AveragedModel

from redheart.config import RunConfig
from redheart.model.model import RedHeartModel
from redheart.train.precision import Precision

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, strict=True)


def uses_fsdp(config: RunConfig, world_size: int) -> bool:
    """Whether a job of `world_size` processes shards the model (train.distributed; "auto": the full preset)."""
    mode = config.train.distributed
    if mode not in ("ddp", "fsdp", "auto"):
        raise ValueError(f"train.distributed is {mode!r}; choose 'ddp', 'fsdp' or 'auto'")
    return world_size > 1 and (mode == "fsdp" or (mode == "auto" and config.preset == "full"))


def shard(model: RedHeartModel, ema: AveragedModel | None, precision: Precision, world_size: int) -> None:
    """Shard `model` and the EMA's copy over the job's processes; call before building the optimizer."""
    if precision.dtype == torch.float16:
        # GradScaler would skip the step on the ranks whose shards overflowed and take it on the others.
        raise ValueError(
            "FSDP trains in fp32 or bf16; this GPU has no bf16, so set train.amp=false or train.distributed=ddp"
        )
    mesh = init_device_mesh(precision.device.type, (world_size,))
    for module in [model] + ([ema.module] if ema is not None else []):
        scalars = {p for p in module.parameters() if p.dim() == 0}
        policy = mixed_precision_policy(precision if module is model else None)
        for name in model.module_names:
            fully_shard(
                getattr(module, name), mesh=mesh, reshard_after_forward=True, ignored_params=scalars, mp_policy=policy
            )
        fully_shard(module, mesh=mesh, reshard_after_forward=True, ignored_params=scalars, mp_policy=policy)
        for unit in module.modules():
            if isinstance(unit, FSDPModule):
                unit.set_gradient_divide_factor(1.0)
                unit.set_force_sum_reduction_for_comms(True)


def mixed_precision_policy(precision: Precision | None) -> MixedPrecisionPolicy:
    """bf16 gathers with fp32 reduction and accumulation under bf16 autocast; fp32 throughout otherwise."""
    if precision is not None and precision.dtype == torch.bfloat16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def sync_gradients(model: nn.Module, sync: bool) -> None:
    """Whether the next backward reduce-scatters the gradients (True) or accumulates them unsharded; a no-op
    for a model that is not sharded."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def is_sharded(module: nn.Module) -> bool:
    """Whether `module` or a part of it (the EMA's copy in an AveragedModel) is sharded by FSDP."""
    return any(isinstance(part, FSDPModule) for part in module.modules())


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """module.state_dict() with whole tensors; sharded: a collective, the tensors on rank 0's host, {} elsewhere."""
    if is_sharded(module):
        return cast(dict[str, torch.Tensor], get_model_state_dict(module, options=_GATHER))
    return module.state_dict()


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors strictly (every rank passes the same `state`; each keeps its shard)."""
    if is_sharded(module):
        set_model_state_dict(module, cast(dict[str, Any], state), options=_SCATTER)
    else:
        module.load_state_dict(state, strict=True)


def host_view(model: RedHeartModel) -> RedHeartModel | None:
    """`model` itself, or for a sharded one a plain model holding the gathered weights on rank 0 (None
    elsewhere): what checkpoints and module statistics read. A collective when sharded."""
    if not is_sharded(model):
        return model
    state = full_state(model)
    if not state:
        return None
    with torch.device("meta"):
        plain = RedHeartModel(model.config, model.input_dim, model.max_segments, model.specs)
    plain.load_state_dict(state, strict=True, assign=True)  # assign: the gathered tensors, no second copy
    return plain


def full_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """The accumulated gradients by parameter name (empty at window ends), whole; sharded: a collective."""
    grads = {}
    for name, param in model.named_parameters():
        if param.grad is not None:
            grads[name] = param.grad.full_tensor().cpu() if isinstance(param.grad, DTensor) else param.grad
    return grads


def load_full_grads(model: nn.Module, grads: dict[str, torch.Tensor]) -> None:
    """Set each parameter's gradient from whole tensors (none for a name not in `grads`); each rank keeps its shard."""
    for name, param in model.named_parameters():
        grad = grads[name].to(param.device) if name in grads else None
        if grad is not None and isinstance(param, DTensor):
            grad = distribute_tensor(grad, param.device_mesh, param.placements)
        param.grad = grad


def drop_summed_grads(model: nn.Module) -> None:
    """Drop the gradients that the ranks sum with all_reduce (every one under DDP, the unsharded scalars under
    FSDP), keeping FSDP's shards; on all ranks but one, a window begun by one process then counts once."""
    for param in model.parameters():
        if not isinstance(param, DTensor):
            param.grad = None


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with whole tensors, in torch's layout (state keyed by parameter index);
    sharded: a collective, the state on rank 0's host, {} elsewhere."""
    if not is_sharded(model):
        return optimizer.state_dict()
    state: dict[str, Any] = cast(dict[str, Any], get_optimizer_state_dict(model, optimizer, options=_GATHER))
    if not state:  # not rank 0
        return {}
    # The gathered state is keyed by parameter name; the index is the place in the optimizer's groups.
    index = {name: i for i, name in enumerate(name for group in state["param_groups"] for name in group["params"])}
    return {
        "state": {index[name]: values for name, values in state["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]} for group in state["param_groups"]
        ],
    }


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state of full_optimizer_state's layout (every rank passes the same `state`)."""
    if not is_sharded(model):
        optimizer.load_state_dict(state)
        return
    names_of = {id(param): name for name, param in model.named_parameters()}
    names = [names_of[id(param)] for group in optimizer.param_groups for param in group["params"]]
    by_name: dict[str, Any] = {
        "state": {names[index]: values for index, values in state["state"].items()},
        "param_groups": [
            {**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_SCATTER)
    # The loader first lays out a state for every parameter with a zero-learning-rate step; a parameter
    # the saved state has none for (no step taken yet, or never a gradient) must have none, or its first
    # real step would count as its second.
    for group in optimizer.param_groups:
        for param in group["params"]:
            if names_of[id(param)] not in by_name["state"]:
                optimizer.state.pop(param, None)
