import json
import math

import pytest
import torch

from redheart.config import TrainConfig
from redheart.core.atomic import read_json
from redheart.model.model import RedHeartModel
from redheart.train.ema import build_ema
from redheart.train.optim import parameter_groups
from redheart.train.precision import choose_precision
from redheart.train.schedule import build_scheduler, restart_steps
from redheart.train.state.checkpoints import save_checkpoint
from redheart.train.trainer import EpochTally, Trainer

from tiny_run import synthetic_split, tiny_config


def trained_once(n: int, micro_batch: int, accumulation: int) -> RedHeartModel:
    config = tiny_config(**{"model.dropout": 0.0, "train.micro_batch": micro_batch, "train.accumulation": accumulation})
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=32, max_segments=4)
    # SGD: the step is the gradient itself. Adam would turn float noise in exactly-zero gradients (the
    # attention key bias) into full-size steps and make the comparison meaningless.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, config.train, per_epoch=1)
    trainer = Trainer(model, optimizer, scheduler, None, choose_precision(torch.device("cpu"), True), config.train)
    tally = trainer.run_epoch(synthetic_split(n), epoch=0, seed=0)
    assert len(tally.grad_norms) == 1  # exactly one optimizer step
    return model


@pytest.mark.parametrize("n, micro", [(8, 4), (10, 4)])
def test_accumulation_equals_one_big_batch(n, micro):
    # 10 samples in micro-batches of 4: a window of 4 + 4 + 2, so the short micro-batch weighs 2/10.
    accumulated = trained_once(n, micro, accumulation=math.ceil(n / micro))
    whole = trained_once(n, n, accumulation=1)
    for (name, a), (_, b) in zip(accumulated.named_parameters(), whole.named_parameters()):
        # One SGD step (lr 0.1) of a gradient summed in another order: ~k * 2^-24 of it for k <= 16 terms; rtol 1e-5
        # (~170 ulps) with atol 1e-6 for values near zero, while one sample more or less changes a weight by ~lr/16.
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_layerwise_lr_decay_follows_backbone_depth():
    config = tiny_config().train
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4)
    groups = parameter_groups(model, 1e-3, config)
    depths = model.num_backbone_depths
    rate = {name: g["lr"] for g in groups for name in g["names"]}
    decay = {name: g["weight_decay"] for g in groups for name in g["names"]}
    for name in rate:
        depth = model.backbone_depth(name)
        expected = 1e-3 if depth is None else 1e-3 * config.layer_decay ** (depths - 1 - depth)
        assert rate[name] == pytest.approx(expected), name
    assert rate["emotion_head." + next(n for n, _ in model.emotion_head.named_parameters())] == 1e-3
    deepest = [n for n in rate if model.backbone_depth(n) == 0]
    assert deepest and all(rate[n] == pytest.approx(1e-3 * 0.85 ** (depths - 1)) for n in deepest)
    assert all(decay[n] == 0.0 for n in rate if n.endswith("bias"))
    assert any(decay[n] == config.weight_decay for n in rate)


def test_schedule_warms_up_then_restarts_at_the_right_steps():
    config = TrainConfig(warmup_epochs=0.5, restart_epochs=2, restart_mult=2, min_lr=1e-6)
    per_epoch = 10
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = build_scheduler(optimizer, config, per_epoch)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert restart_steps(config, per_epoch, 100) == [25, 65]  # 5 warm-up + 20, then + 40
    assert rates[0] < rates[1] < rates[4] < 1e-3
    for peak in (5, 25, 65):
        assert rates[peak] == pytest.approx(1e-3)
        assert rates[peak - 1] < 1e-3
    # One step before a restart the cosine is at (1 + cos(19 pi / 20)) / 2 ~ 0.006 of the peak: within 1e-5 of eta_min.
    assert rates[24] == pytest.approx(1e-6, abs=1e-5) and rates[64] == pytest.approx(1e-6, abs=1e-5)
    # Half-way through the first 20-step cycle: step 15 is 10 steps into it, exactly half-way, rel 1e-3 spare.
    assert rates[15] == pytest.approx((1e-3 + 1e-6) / 2, rel=1e-3)


def test_scheduler_state_resumes_the_same_rates():
    config = TrainConfig(warmup_epochs=0.5, restart_epochs=1)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = build_scheduler(optimizer, config, per_epoch=6)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    fresh_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    fresh = build_scheduler(fresh_optimizer, config, per_epoch=6)
    fresh.load_state_dict(scheduler.state_dict())
    fresh_optimizer.load_state_dict(optimizer.state_dict())
    for _ in range(5):
        for opt, sched in ((optimizer, scheduler), (fresh_optimizer, fresh)):
            opt.step()
            sched.step()
        assert fresh_optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]


def test_ema_follows_the_weights_with_its_decay():
    model = torch.nn.Linear(2, 1)
    ema = build_ema(model, decay=0.9)
    assert build_ema(model, decay=0.0) is None
    start = model.weight.detach().clone()
    ema.update_parameters(model)  # the first update copies
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    torch.testing.assert_close(ema.module.weight, start + 0.1)


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16)])
def test_bf16_only_where_the_gpu_runs_it_natively(monkeypatch, capability, dtype):
    # A T4 (7.5) emulates bf16, and torch.cuda.is_bf16_supported() counts that: fp16 with loss scaling there.
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    precision = choose_precision(torch.device("cuda"), amp=True)
    assert precision.dtype == dtype


def test_a_skipped_fp16_step_writes_its_gradient_norm_as_null(tmp_path):
    # The GradScaler skips a step whose gradients overflowed; its norm is inf or nan, which strict JSON refuses.
    tally = EpochTally(grad_norms=[torch.tensor(2.0), torch.tensor(float("inf")), torch.tensor(float("nan")), 4.0])
    stats = tally.grad_norm_stats()
    assert stats == {"steps": 4, "non_finite": 2, "mean": 3.0, "std": 1.0, "min": 2.0, "max": 4.0}
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4)
    save_checkpoint(model, tmp_path / "epoch_001", {"epoch": 1, "grad_norm": stats}, "tiny")
    assert read_json(tmp_path / "epoch_001" / "metrics.json")["grad_norm"]["non_finite"] == 2
    saved = json.loads(json.dumps(tally.to_json(), allow_nan=False))  # the resume state's tally, strict JSON
    assert saved["grad_norms"] == [2.0, None, None, 4.0]
    assert EpochTally.from_json(saved).grad_norm_stats() == stats
    assert EpochTally(grad_norms=[float("inf")]).grad_norm_stats()["mean"] is None
