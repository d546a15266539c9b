"""Group-wise swap training computes the standard trainer's step: same losses, gradients, weights, optimizer
state and EMA, within float summation order. Dropout is off so that both paths draw no random masks.

On CPU the swap's moves are no-ops, so these tests check the decomposition and the bookkeeping; the CUDA
test checks that a group really leaves the device.
"""

from __future__ import annotations

import pytest
import torch

from redheart.core.faults import NO_FAULTS, Faults
from redheart.data.dataset import SplitTensors, training_order, verdict_only_rows
from redheart.model.groups import GROUPS
from redheart.model.model import RedHeartModel
from redheart.train.ema import build_ema
from redheart.train.optim import build_optimizer
from redheart.train.precision import choose_precision
from redheart.train.schedule import build_scheduler
from redheart.train.state.resume import load_resume, save_resume
from redheart.train.swap.forward import detached, group_loss, group_outputs
from redheart.train.swap.trainer import GroupSwapTrainer
from redheart.train.trainer import EpochTally, Trainer

from tiny_run import ADAM_STEP, synthetic_split, tiny_config

# Swap sums the same terms grouped otherwise (one group's losses at a time): a gradient entry, a sum of at most
# ~16 terms here (a window's samples), moves by gamma_16 ~ 16 * 2^-24 ~ 1e-6 of its terms' size. AdamW's step is
# invariant to the gradient's scale, so a relative gradient error of 1e-6 moves a weight by at most
# 2e-6 * ADAM_STEP * LR ~ 6e-9 per step: the same 1e-6 holds for weights and moments after the few steps here.
TOLERANCE = {"atol": 1e-6, "rtol": 1e-6}
LR = 1e-3


def trainer_of(
    kind: type[Trainer], device: str = "cpu", memory_saving: bool = False, faults: Faults = NO_FAULTS, **overrides
) -> Trainer:
    """A trainer on the tiny preset (micro-batch 8, windows of 16) with dropout off, built from seed 0."""
    config = tiny_config(**{"model.dropout": 0.0, **overrides})
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=32, max_segments=4).to(device)
    optimizer = build_optimizer(model, LR, config.train)
    scheduler = build_scheduler(optimizer, config.train, per_epoch=3)
    precision = choose_precision(torch.device(device), config.train.amp)
    trainer = kind(model, optimizer, scheduler, build_ema(model, 0.9), precision, config.train, faults)
    trainer.plan.memory_saving = memory_saving
    return trainer


def assert_weights_close(name: str, actual: torch.Tensor, expected: torch.Tensor, steps: int) -> None:
    """Within TOLERANCE, except the attention key bias: its true gradient is exactly zero (softmax ignores a
    shift of all scores), so AdamW turns float noise into steps of up to ADAM_STEP * LR in either run."""
    if name.endswith("qkv.bias"):
        (q, k, v), (q0, k0, v0) = actual.chunk(3), expected.chunk(3)
        torch.testing.assert_close(k, k0, atol=2 * steps * ADAM_STEP * LR, rtol=0, msg=name)
        actual, expected = torch.cat([q, v]), torch.cat([q0, v0])
    torch.testing.assert_close(actual, expected, **TOLERANCE, msg=name)


def optimizer_steps(trainer: Trainer) -> int:
    return int(max(float(state["step"]) for state in trainer.optimizer.state.values()))


def last_grads(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Arms the gradient probe: filled with the clipped gradients of the epoch's last window."""
    grads: dict[str, torch.Tensor] = {}
    trainer.grad_probe = lambda model: grads.update(
        {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    )
    return grads


def assert_same_training(standard: Trainer, swap: Trainer, epochs: int = 1, split: SplitTensors | None = None) -> None:
    split = split or synthetic_split(44)  # windows of 16, 16 and a short one of 8 + 4 samples
    grads = (last_grads(standard), last_grads(swap))
    for epoch in range(epochs):
        tallies = [trainer.run_epoch(split, epoch=epoch, seed=0) for trainer in (standard, swap)]
    means = [tally.means() for tally in tallies]
    assert set(means[0]) == set(means[1])
    for name in means[0]:
        # Mean losses over the epoch's samples, reordered like the gradients (TOLERANCE's argument); abs 1e-7 for
        # terms near zero, where a relative bound says nothing.
        assert means[1][name] == pytest.approx(means[0][name], rel=1e-6, abs=1e-7), name
    torch.testing.assert_close(torch.stack(tallies[1].grad_norms), torch.stack(tallies[0].grad_norms), **TOLERANCE)
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], **TOLERANCE, msg=name)
    for a, b in ((standard.model, swap.model), (standard.ema, swap.ema)):
        for (name, value), (_, other) in zip(a.state_dict().items(), b.state_dict().items()):
            assert_weights_close(name, other, value, steps=optimizer_steps(standard))
    # Same layout and values, so the resume code loads either trainer's optimizer state.
    states = [trainer.optimizer.state_dict() for trainer in (standard, swap)]
    assert states[0]["param_groups"] == states[1]["param_groups"]
    assert states[0]["state"].keys() == states[1]["state"].keys()
    for index, state in states[0]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(states[1]["state"][index][key], value, **TOLERANCE, msg=f"{index}.{key}")


@pytest.mark.parametrize(
    "rdrop_alpha, memory_saving",
    [(0.0, False), (1.0, False), (1.0, True)],
    ids=["plain", "rdrop", "rdrop-memory-saving"],
)
def test_swap_trains_exactly_as_the_standard_trainer(rdrop_alpha, memory_saving):
    overrides = {"train.rdrop_alpha": rdrop_alpha}
    standard = trainer_of(Trainer, memory_saving=memory_saving, **overrides)
    swap = trainer_of(GroupSwapTrainer, memory_saving=memory_saving, **overrides)
    assert_same_training(standard, swap, epochs=2 if rdrop_alpha == 0 else 1)


@pytest.mark.parametrize("rdrop_alpha", [0.0, 1.0], ids=["plain", "rdrop"])
def test_swap_trains_as_the_standard_trainer_with_verdict_only_windows(rdrop_alpha):
    # Every other row keeps its verdict only (as --extra-verdicts records do): training_order deals a window of 16
    # verdict-only rows, one of 16 full rows and a last one of 6 + 6 that mixes them. On verdict-only batches the
    # standard trainer runs the backbone, the verdict modules and the fusion only; every other module gets no
    # gradient there, and AdamW leaves a parameter without one untouched (no momentum, no weight decay).
    split = synthetic_split(44)
    for row in range(1, 44, 2):
        for name in ("emotions", "regret_factor", "bentham_scores", "surd_metrics"):
            split.tensors[f"{name}_present"][row] = False
    windows = list(torch.split(training_order(split, 0, 0, 16), 16))
    only = verdict_only_rows(split.tensors)
    assert [int(only[w].sum()) for w in windows if bool(only[w].all())] == [16]
    overrides = {"train.rdrop_alpha": rdrop_alpha}
    standard, swap = trainer_of(Trainer, **overrides), trainer_of(GroupSwapTrainer, **overrides)
    assert_same_training(standard, swap, epochs=2, split=split)


def test_out_of_memory_redoes_the_window_group_by_group_with_smaller_micro_batches():
    calls = []

    def fail_once(stage: str, size: int) -> None:
        calls.append((stage, size))
        if len(calls) == 6:  # group_b's first backward: group_a's gradients of the window are already stored
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    # The reference runs from the start at the sizes the faulted one falls back to: 4 micro-batches of 4.
    reference = trainer_of(GroupSwapTrainer, **{"train.micro_batch": 4, "train.accumulation": 4})
    swap = trainer_of(GroupSwapTrainer, faults=Faults(step=fail_once))
    assert_same_training(reference, swap)
    assert (swap.plan.micro_batch, swap.plan.accumulation) == (4, 4)
    assert calls[5] == ("backward", 8) and calls[6] == ("forward", 4)


def test_swap_trainer_finishes_a_window_the_standard_trainer_began(tmp_path):
    """A resume state saved mid-window (gradients of the first micro-batch included) continues group-wise."""
    split = synthetic_split(44)

    class Stop(Exception):
        pass

    def save_mid_window(sample: int, tally: EpochTally) -> None:
        if sample == 24:  # the first micro-batch of the second window
            save_resume(tmp_path, interrupted, {"sample": sample, "tally": tally.to_json()})
            raise Stop

    interrupted = trainer_of(Trainer)
    with pytest.raises(Stop):
        interrupted.run_epoch(split, epoch=0, seed=0, after_micro_step=save_mid_window)
    swap = trainer_of(GroupSwapTrainer)
    info = load_resume(tmp_path, swap, identity={})
    assert any(p.grad is not None for p in swap.model.parameters())
    tally = swap.run_epoch(
        split, epoch=0, seed=0, start_sample=info["sample"], tally=EpochTally.from_json(info["tally"])
    )
    standard = trainer_of(Trainer)
    reference = standard.run_epoch(split, epoch=0, seed=0)
    assert tally.means()["total"] == pytest.approx(reference.means()["total"], rel=1e-6)  # TOLERANCE's argument
    for (name, value), (_, other) in zip(standard.model.state_dict().items(), swap.model.state_dict().items()):
        assert_weights_close(name, other, value, steps=optimizer_steps(standard))


def test_each_groups_gradient_is_the_gradient_of_its_own_losses():
    trainer = trainer_of(Trainer, **{"train.rdrop_alpha": 0.0})
    model, config = trainer.model, trainer.config
    batch = synthetic_split(8).batch(torch.arange(8))
    x, mask = batch["x"], batch["mask"]
    out = model(x, mask)
    joint = sum(model.losses(out, batch, config.label_smoothing).values())
    for group, names in GROUPS.items():
        params = [p for name in names for p in getattr(model, name).parameters()]
        from_joint = torch.autograd.grad(joint, params, retain_graph=True)
        alone, _ = group_loss(model, [group_outputs(model, group, x, mask, detached(out))], batch, config)
        for a, b in zip(torch.autograd.grad(alone, params), from_joint):
            torch.testing.assert_close(a, b, **TOLERANCE, msg=group)


def test_other_groups_weights_reach_a_group_only_through_the_detached_fusion_inputs():
    batch = synthetic_split(8).batch(torch.arange(8))

    def module_grads(model: RedHeartModel) -> dict[str, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        sum(model.losses(model(batch["x"], batch["mask"]), batch, 0.1).values()).backward()
        return {
            name: [p.grad.clone() for p in getattr(model, name).parameters()]
            for names in GROUPS.values()
            for name in names
        }

    model = trainer_of(Trainer).model
    reference = module_grads(model)
    for group, names in GROUPS.items():
        with torch.no_grad():
            others = [
                p
                for other, members in GROUPS.items()
                if other != group
                for m in members
                for p in getattr(model, m).parameters()
            ]
            saved = [p.clone() for p in others]
            for p in others:
                p.add_(torch.randn_like(p) * 0.5)
        perturbed = module_grads(model)
        with torch.no_grad():
            for p, value in zip(others, saved):
                p.copy_(value)
        for name in names:
            same = all(torch.allclose(a, b, **TOLERANCE) for a, b in zip(perturbed[name], reference[name]))
            # Only the fusion reads other groups' outputs (detached): only its gradient may change.
            assert same == (name != "kalman"), name


@pytest.mark.cuda
def test_one_group_at_a_time_is_on_the_device():
    swap = trainer_of(GroupSwapTrainer, device="cuda", **{"train.amp": False})
    model = swap.model
    seen = []

    def check(module: torch.nn.Module, _args) -> None:
        group = next(g for g, names in GROUPS.items() if any(getattr(model, n) is module for n in names))
        on_device = {
            g for g, names in GROUPS.items() for n in names for p in getattr(model, n).parameters() if p.is_cuda
        }
        seen.append(group)
        assert on_device == {group}

    for names in GROUPS.values():
        for name in names:
            getattr(model, name).register_forward_pre_hook(check)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    swap.run_epoch(synthetic_split(16), epoch=0, seed=0)
    assert set(seen) == set(GROUPS) and seen[-1] == "group_c"
    assert all(not p.is_cuda for p in model.parameters()) and all(not p.is_cuda for p in swap.ema.parameters())
    assert all(p.is_pinned() for p in model.parameters())
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    assert all(not v.is_cuda for state in swap.optimizer.state.values() for v in state.values())
