"""The EMA averaged every k optimizer steps with decay^k (train/ema.py) against the EMA of every step.

Float bounds: a lerp a + t (b - a) in fp32 rounds each of its operations at half an ulp (unit roundoff
u = 2^-24), so one update is off by at most about 4 u max(|a|, |b|); n updates add up to 4 n u M, M the
largest magnitude involved. The weight 1 - d^k is computed in float64 and rounded to fp32 once per update,
which moves the result by at most u |b - a| more, inside the same bound.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from redheart.train.ema import EMA, build_ema

U = 2.0**-24
DECAY = 0.9


def weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def set_weights(model: nn.Module, value: torch.Tensor) -> None:
    with torch.no_grad():
        start = 0
        for p in model.parameters():
            p.copy_(value[start : start + p.numel()].view_as(p))
            start += p.numel()


def model_at(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 3))


def test_every_k_steps_equals_every_step_on_constant_weights():
    """After a first update at w0, 48 steps at w1: both give d^48 w0 + (1 - d^48) w1, up to rounding."""
    model = model_at(0)
    w0, w1 = weights(model), weights(model_at(1))
    per_step, every_16 = build_ema(model, DECAY), build_ema(model, DECAY, every=16)
    for ema in (per_step, every_16):
        ema.update_parameters(model)
        ema.flush(model)  # the first update copies w0
    set_weights(model, w1)
    steps = 48
    for _ in range(steps):
        per_step.update_parameters(model)
        every_16.update_parameters(model)
    exact = DECAY**steps * w0.double() + (1 - DECAY**steps) * w1.double()
    bound = 4 * (steps + 1) * U * float(torch.maximum(w0.abs(), w1.abs()).max())
    for ema in (per_step, every_16):
        assert float((weights(ema.module).double() - exact).abs().max()) <= bound
    assert int(every_16.n_averaged) == 1 + steps // 16 and int(every_16.pending_steps) == 0


def test_every_k_steps_stays_within_the_derived_bound_of_every_step_on_drifting_weights():
    """Weights drifting by delta per step: every k steps the every-step EMA gains (1 - d) delta sum_{j<k} j d^j
    over the every-k one (see train/ema.py), shrunk by d^k per window, so the gap stays under
    (1 - d) delta sum_{j<k} j d^j / (1 - d^k), far below the EMA's own lag d delta / (1 - d) behind the weights."""
    k, windows, delta = 4, 10, 1e-3
    model = model_at(0)
    w0 = weights(model)
    per_step, every_k = build_ema(model, DECAY), build_ema(model, DECAY, every=k)
    for ema in (per_step, every_k):
        ema.update_parameters(model)
        ema.flush(model)
    for step in range(1, k * windows + 1):
        set_weights(model, w0 + step * delta)
        per_step.update_parameters(model)
        every_k.update_parameters(model)
    gap = float((weights(per_step.module).double() - weights(every_k.module).double()).abs().max())
    derived = (1 - DECAY) * delta * sum(j * DECAY**j for j in range(k)) / (1 - DECAY**k)
    rounding = 4 * 2 * k * windows * U * float((w0.abs() + k * windows * delta).max())
    assert 0 < gap <= derived + rounding


def test_one_step_at_a_time_is_torchs_ema():
    model = model_at(0)
    ours = build_ema(model, DECAY)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY), use_buffers=True)
    for seed in range(1, 5):
        set_weights(model, weights(model_at(seed)))
        ours.update_parameters(model)
        torchs.update_parameters(model)
    assert torch.equal(weights(ours.module), weights(torchs.module))  # the same lerps, in the same order


def test_pending_steps_are_part_of_the_state():
    """A state saved with 3 of 4 steps pending continues as the uninterrupted EMA does."""
    model = model_at(0)
    ema = build_ema(model, DECAY, every=4)
    for seed in range(1, 4):
        set_weights(model, weights(model_at(seed)))
        ema.update_parameters(model)
    resumed = EMA(model_at(9), DECAY, every=4)
    resumed.load_state_dict(ema.state_dict())
    assert int(resumed.pending_steps) == 3
    set_weights(model, weights(model_at(4)))
    ema.update_parameters(model)
    resumed.update_parameters(model)
    assert torch.equal(weights(ema.module), weights(resumed.module)) and int(resumed.n_averaged) == 1


def test_a_state_saved_before_pending_steps_existed_loads_with_none_pending():
    model = model_at(0)
    old = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY), use_buffers=True)
    old.update_parameters(model)
    ema = EMA(model_at(1), DECAY, every=4)
    ema.load_state_dict(old.state_dict())  # strict
    assert int(ema.pending_steps) == 0 and torch.equal(weights(ema.module), weights(old.module))


@pytest.mark.parametrize(("decay", "every"), [(0.0, 1), (1.0, 1), (0.9, 0)])
def test_a_decay_outside_0_1_or_a_step_count_below_1_is_refused(decay, every):
    with pytest.raises(ValueError, match="train.ema_"):
        EMA(model_at(0), decay, every=every)
