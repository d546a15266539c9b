"""Where evaluation runs: on the GPU for weights in host memory, whole or one module group at a time as its
memory allows (train/evaluation.py). The choice is shown with device bytes given by hand (no GPU needed), and
the group-at-a-time pass on the CPU, where it must give the model's own outputs."""

from __future__ import annotations

import pytest
import torch

from redheart.model.groups import GROUPS
from redheart.model.model import RedHeartModel
from redheart.train import evaluation
from redheart.train.evaluation import EVAL_HEADROOM, Placement, evaluation_placement, split_forward
from redheart.train.memory.plan import DEFAULT_RESERVE, GiB

from tiny_run import synthetic_split, tiny_config

CUDA, CPU = torch.device("cuda", 0), torch.device("cpu")


def tiny_model() -> RedHeartModel:
    torch.manual_seed(0)
    return RedHeartModel(tiny_config().model, input_dim=32, max_segments=4).eval()


def nbytes(modules) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers()))


def test_host_weights_go_to_the_gpu_whole_by_group_or_not_at_all_as_its_free_memory_allows():
    model = tiny_model()
    whole = nbytes([model])
    largest = max(nbytes([getattr(model, name) for name in names]) for names in GROUPS.values())
    assert largest < whole
    assert evaluation_placement(model, CPU, None) == Placement(CPU)  # no GPU: where the weights are
    assert evaluation_placement(model, CUDA, whole + EVAL_HEADROOM) == Placement(CUDA)
    assert evaluation_placement(model, CUDA, whole + EVAL_HEADROOM - 1) == Placement(CUDA, by_group=True)
    assert evaluation_placement(model, CUDA, largest + EVAL_HEADROOM) == Placement(CUDA, by_group=True)
    assert evaluation_placement(model, CUDA, largest + EVAL_HEADROOM - 1) == Placement(CPU)


def test_the_memory_an_evaluation_may_use_is_the_plans_budget_less_what_torch_holds(monkeypatch):
    allocated, reserved = 3 * GiB, 4 * GiB
    monkeypatch.setattr(evaluation, "device_memory", lambda device: 8 * GiB if device.type == "cuda" else None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 1.0, raising=False)
    # The card alone: the budget of 7.5 GiB less the 3 GiB allocated; the 1 GiB torch caches is usable.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * GiB - DEFAULT_RESERVE, 8 * GiB))
    assert evaluation.available_bytes(CUDA) == 8 * GiB - DEFAULT_RESERVE - allocated
    # Another process holds 2 GiB more: what is free plus torch's cache.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (GiB, 8 * GiB))
    assert evaluation.available_bytes(CUDA) == GiB + (reserved - allocated)
    # The allocator capped at 6 GiB of the card (as the GPU check caps it): the cap less what is allocated.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * GiB, 8 * GiB))
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: 0.75, raising=False)
    assert evaluation.available_bytes(CUDA) == 6 * GiB - allocated
    assert evaluation.available_bytes(CPU) is None


@pytest.mark.parametrize("batch_size", [5, 64])
def test_one_group_at_a_time_gives_the_models_outputs(batch_size):
    """The same modules on the same inputs in eval mode (no dropout): equal outputs, the fusion's included."""
    model, split = tiny_model(), synthetic_split(12)
    whole = split_forward(model, split, batch_size, Placement(CPU))
    by_group = split_forward(model, split, batch_size, Placement(CPU, by_group=True))
    assert len(whole) == len(by_group) == -(-12 // batch_size)
    for (_, expected), (_, got) in zip(whole, by_group):
        assert set(got) == set(expected)
        for module, targets in expected.items():
            for target, value in targets.items():
                torch.testing.assert_close(got[module][target], value, rtol=0, atol=0, msg=f"{module} {target}")
