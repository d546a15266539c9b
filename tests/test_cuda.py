"""The CUDA paths, on a GPU (`pytest -m cuda`; skipped without one, see conftest.py). Under five minutes on one
GPU: the tiny and small presets, a few optimizer steps each. bench/gpu_check.py runs this suite beside the
full preset's measurements.

Bit-identical comparisons (resume) run with torch's deterministic algorithms: without them a GPU may add
in another order from one run to the next (atomic additions), and equal runs would differ by rounding.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import socket

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from redheart.config import PRESETS, EncoderConfig
from redheart.core.atomic import read_json
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split
from redheart.data.encoders import MiniLMEncoder
from redheart.infer import Predictor
from redheart.model.model import RedHeartModel
from redheart.select.final_model import save_final_model
from redheart.train.ema import EMA
from redheart.train.evaluation import Placement, split_forward
from redheart.train.memory.activations import empty_model
from redheart.train.memory.plan import DEFAULT_RESERVE, plan_memory
from redheart.train.recipe import train
from redheart.train.telemetry.records import read_metrics

from tiny_run import make_run, synthetic_split, tiny_config

# cuBLAS needs this before its first handle for deterministic results (no CUDA call has run at import).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda", 0)
U32 = 2.0**-24  # fp32 unit roundoff


def on_cuda(**overrides):
    """The tiny preset on the GPU, micro-batch 4 x accumulation 2 (3 optimizer steps an epoch on 24 records)."""
    return tiny_config(**{"train.device": "cuda", "train.micro_batch": 4, "train.accumulation": 2, **overrides})


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True, warn_only=True)
    yield
    torch.use_deterministic_algorithms(False)


def resume_weights(out) -> dict[str, torch.Tensor]:
    slot = read_json(out / "resume" / "current.json")["slot"]
    return load_file(str(out / "resume" / slot / "model.safetensors"))


@pytest.mark.parametrize("strategy", ["standard", "saving", "swap"])
def test_each_memory_strategy_trains_with_bf16_autocast_and_writes_checkpoints(data, tmp_path, strategy):
    config = on_cuda(**{"train.memory": strategy, "train.amp": True})
    result = train(data, config, lr=3e-3, epochs=3, output=RunDir(tmp_path), progress=False)
    rows = read_metrics(result.output.metrics_log)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"]["total"] < rows[0]["train_loss"]["total"]
    assert all(np.isfinite(row["grad_norm"]["mean"]) for row in rows)
    for epoch in (1, 2, 3):
        assert (result.output.checkpoint(epoch) / "manifest.json").exists()
    assert (result.output.checkpoints / "ema" / "manifest.json").exists()
    assert read_json(result.output.resume / "current.json")["slot"]
    assert rows[-1]["peak_memory_bytes"] > 0  # measured on the device


@pytest.mark.parametrize(
    ("strategy", "overrides"), [("saving", {}), ("standard", {"train.amp": False})], ids=["saving-8bit", "standard-rng"]
)
def test_resume_on_cuda_is_bit_identical(data, tmp_path, deterministic, strategy, overrides):
    """saving: bitsandbytes' 8-bit AdamW state and bf16 autocast; standard with dropout: the CUDA generator's
    state (dropout masks are drawn on the GPU) is saved and restored."""
    config = on_cuda(**{"train.memory": strategy, **overrides})
    straight, halves = tmp_path / "straight", tmp_path / "halves"
    train(data, config, lr=3e-3, epochs=2, output=RunDir(straight), progress=False)
    train(data, config, lr=3e-3, epochs=1, output=RunDir(halves), progress=False)
    torch.cuda.manual_seed_all(12345)  # the resumed run must not depend on the generator it finds
    torch.rand(7, device=CUDA)
    train(data, config, lr=3e-3, epochs=2, output=RunDir(halves), progress=False)
    want, got = resume_weights(straight), resume_weights(halves)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def test_a_cuda_out_of_memory_error_is_recovered_with_the_same_windows(tmp_path):
    """The small preset's model in fp32 at micro-batch 1,024, windows of 2,048 (R-Drop, dropout and EMA off: the
    runs draw no random numbers). Activations there take about 110 MiB more than at 512 (measured on the CPU
    by the memory plan), so a cap halfway between the peaks measured at 1,024 and at 512 makes the first window
    run out of memory on the device; it is redone at 512, and every later window runs at 512: the same windows
    and micro-batches, so the same weights as a run at 512 from the start, up to the order of additions
    (test_oom.py's argument: AdamW turns that into at most ~1e-4 here, a skipped micro-batch moves weights by lr)."""
    run = make_run(tmp_path / "data", n=6830)  # 4,098 training records: two windows of 2,048 and one of 2

    def run_at(micro_batch: int, name: str):
        config = tiny_config(
            **{
                "train.device": "cuda",
                "train.amp": False,
                "train.micro_batch": micro_batch,
                "train.accumulation": 2048 // micro_batch,
                "train.rdrop_alpha": 0.0,
                "train.ema_decay": 0.0,
                "train.telemetry": False,
            }
        )
        config = dataclasses.replace(config, model=dataclasses.replace(PRESETS["small"].model, dropout=0.0))
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(CUDA)
        result = train(run, config, lr=1e-3, epochs=1, output=RunDir(tmp_path / name), progress=False)
        return result, torch.cuda.max_memory_reserved(CUDA)

    _, full_peak = run_at(1024, "at_1024")
    half, half_peak = run_at(512, "at_512")
    assert full_peak - half_peak > 64 * 2**20, (full_peak, half_peak)  # room for a cap between them
    total = torch.cuda.get_device_properties(CUDA).total_memory
    try:
        torch.cuda.set_per_process_memory_fraction((half_peak + full_peak) / 2 / total, CUDA)
        capped, _ = run_at(1024, "capped")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, CUDA)
        torch.cuda.empty_cache()
    assert [event["micro_batch"] for event in capped.out_of_memory_events] == [512]
    rows, want_rows = read_metrics(capped.output.metrics_log), read_metrics(half.output.metrics_log)
    assert rows[0]["grad_norm"]["steps"] == want_rows[0]["grad_norm"]["steps"] == 3
    got, want = resume_weights(capped.output.root), resume_weights(half.output.root)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=3e-4, msg=key)


def test_the_measured_peak_stays_within_the_plan_and_its_reserve(data, tmp_path):
    """The small preset's model, standard strategy: what the allocator reserved is at most the plan's device
    bytes plus the reserve the plan keeps beside them (the budget's promise); the ratio is recorded."""
    config = on_cuda(**{"train.telemetry": False, "train.memory": "standard"})
    config = dataclasses.replace(config, model=PRESETS["small"].model)
    split = load_split(data, "train")
    plan = plan_memory(empty_model(config, split.input_dim, split.max_segments), config, 2**40, DEFAULT_RESERVE)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(CUDA)
    train(data, config, lr=1e-3, epochs=1, output=RunDir(tmp_path), progress=False)
    reserved = torch.cuda.max_memory_reserved(CUDA)
    planned = plan.footprint("standard").device_total
    print(f"standard, small model: planned {planned:,} B, reserved {reserved:,} B ({reserved / planned:.2f}x)")
    assert reserved <= planned + DEFAULT_RESERVE


def test_a_host_ema_of_a_cuda_model_is_the_ema_of_its_weights():
    """The pinned, asynchronous copies bring the exact values: the same lerps as from a host copy of the model."""
    torch.manual_seed(0)
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4)
    host_copy = copy.deepcopy(model)
    from_gpu, from_host = EMA(model, 0.9, every=2), EMA(host_copy, 0.9, every=2)
    model.to(CUDA)
    for step in range(6):
        with torch.no_grad():
            for param, twin in zip(model.parameters(), host_copy.parameters()):
                noise = torch.randn(param.shape, generator=torch.Generator().manual_seed(step))
                param.add_(noise.to(CUDA))
                twin.add_(noise)
        from_gpu.update_parameters(model)
        from_host.update_parameters(host_copy)
    for a, b in zip(from_gpu.module.parameters(), from_host.module.parameters()):
        assert a.device.type == "cpu" and torch.equal(a, b)


def test_evaluation_one_group_at_a_time_on_the_gpu_leaves_the_weights_in_host_memory():
    """Eval mode, fp32: the same modules on the same inputs on the same device, in the same order per module."""
    torch.manual_seed(0)
    model = RedHeartModel(tiny_config().model, input_dim=32, max_segments=4).eval()
    split = synthetic_split(20)
    whole = split_forward(model, split, 8, Placement(CUDA))
    by_group = split_forward(model, split, 8, Placement(CUDA, by_group=True))
    assert all(p.device.type == "cpu" for p in model.parameters())
    for (_, expected), (_, got) in zip(whole, by_group):
        for module, targets in expected.items():
            for target, value in targets.items():
                assert value.is_cuda and torch.equal(got[module][target], value), (module, target)


def test_minilm_on_the_gpu_equals_the_cpu_within_fp32_rounding():
    """Six layers of four matrix products each, sums of at most 1,536 terms: each product is within
    n u = 1536 x 2^-24 of the exact one relative to the scale that layer norm keeps at 1, so the 24 products
    move the unit-length output by at most 24 x 1536 x 2^-24 = 2.2e-3 per component (a worst-case bound; TF32,
    which would round to 2^-11, is off by default and checked)."""
    assert not torch.backends.cuda.matmul.allow_tf32
    encoder = MiniLMEncoder(EncoderConfig(batch_size=8))
    texts = ["AITA for hiding my controller? My little brother keeps breaking my things.", "Short.", ""]
    on_gpu, mask = encoder.encode(texts, progress=False)
    assert encoder._model.device.type == "cuda"
    encoder._model.to("cpu")
    on_cpu, cpu_mask = encoder.encode(texts, progress=False)
    assert np.array_equal(mask, cpu_mask)
    assert np.abs(on_gpu - on_cpu).max() <= 24 * 1536 * U32


def test_predict_runs_on_the_gpu_and_agrees_with_the_cpu(tmp_path):
    """The tiny model in fp32: a few products of at most 128 terms per output, so the probabilities (at most 1)
    agree within 10 x 128 x 2^-24 = 7.6e-5; 1e-4 holds that."""
    run = make_run(tmp_path / "run", n=20)
    config = tiny_config()
    torch.manual_seed(0)
    model = RedHeartModel(config.model, input_dim=config.encoder.dim, max_segments=config.encoder.max_segments)
    info = {"candidate": {"name": "untrained"}}
    save_final_model(model, run.final_model, config, config.encoder.dim, config.encoder.max_segments, info)
    texts = ["my friend said apple apple apple", "ember went home", ""]
    gpu = Predictor(run.final_model, calibrated=False, device="cuda")
    assert all(p.is_cuda for p in gpu.model.parameters())
    cpu = Predictor(run.final_model, calibrated=False, device="cpu")
    got, want = gpu.fused(texts), cpu.fused(texts)
    for target, values in want.items():
        np.testing.assert_allclose(got[target], values, rtol=0, atol=1e-4, err_msg=target)


def test_nccl_with_one_process(tmp_path):
    """The process group of the trainer's CUDA backend, and the collectives the trainer uses."""
    import torch.distributed as dist

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.cuda.set_device(CUDA)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, device_id=CUDA)
    try:
        value = torch.tensor([3.0], device=CUDA)
        dist.all_reduce(value)
        dist.barrier(device_ids=[0])
        names: list = [None]
        dist.all_gather_object(names, "rank0")
        assert value.item() == 3.0 and names == ["rank0"] and dist.get_backend() == "nccl"
    finally:
        dist.destroy_process_group()


def test_the_split_lives_on_the_gpu_during_training(data):
    split = load_split(data, "train").to(CUDA)
    batch = split.batch(torch.tensor([0, 2, 4]), CUDA)
    assert all(value.is_cuda for value in batch.values())
    assert split.verdict_only(torch.tensor([0, 2])) is False
