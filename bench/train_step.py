"""Training throughput of redheart's loop against a plain PyTorch loop doing the same work.

Both sides run the same model, batches, precision, R-Drop concat forward, clipping, AdamW (with the
same parameter groups) and EMA; the plain side has none of redheart's bookkeeping (loss tallies,
share-weighted accumulation, scheduler). Prints samples/s of each and the ratio (target >= 0.9).

The telemetry part times redheart's loop on a checkpoint epoch with telemetry on (gradient probe on the
last step, per-epoch block, module_stats.json, TensorBoard scalars, progress report) against the same
epoch with it off, in the same process, and prints the ratio (target >= 0.95) and the fixed cost per
checkpoint. Validation and the checkpoint's weights are left out: they cost the same either way.

    python bench/train_step.py [--presets tiny small] [--samples 256] [--rounds 3] [--parts loop telemetry]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time

import torch
from torch.utils.tensorboard import SummaryWriter

from redheart.architecture import EMOTIONS, VERDICTS
from redheart.config import PRESETS, RunConfig
from redheart.core.atomic import write_json
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors, micro_batches, targets_tensors
from redheart.model.losses import split_halves
from redheart.model.model import RedHeartModel
from redheart.train.ema import build_ema
from redheart.train.optim import build_optimizer
from redheart.train.precision import choose_precision, resolve_device
from redheart.train.schedule import build_scheduler, steps_per_epoch
from redheart.train.telemetry.records import RunTelemetry, append_metrics
from redheart.train.trainer import EpochTally, Trainer


def synthetic_split(n: int, dim: int, segments: int) -> SplitTensors:
    rng = random.Random(0)
    records = []
    for i in range(n):
        emotions = [rng.random() for _ in EMOTIONS]
        records.append(
            {
                "id": str(i),
                "label_scores": {v: rng.randrange(4) + (v == "OTHER") for v in VERDICTS},
                "emotions": [e / sum(emotions) for e in emotions],
                "regret_factor": rng.random(),
                "bentham_scores": [rng.random() for _ in range(4)],
                "surd_metrics": [rng.random() for _ in range(4)],
            }
        )
    lengths = torch.randint(1, segments + 1, (n,))
    tensors = {"x": torch.randn(n, segments, dim), "mask": torch.arange(segments) < lengths[:, None]}
    tensors.update(targets_tensors(records))
    return SplitTensors("train", tuple(r["id"] for r in records), tensors)


def build(config: RunConfig, split: SplitTensors, device: torch.device):
    torch.manual_seed(0)
    model = RedHeartModel(config.model, split.input_dim, split.max_segments).to(device)
    optimizer = build_optimizer(model, 1e-4, config.train)
    return model, optimizer, build_ema(model, config.train.ema_decay)


def redheart_epoch(config: RunConfig, split: SplitTensors, device: torch.device) -> float:
    model, optimizer, ema = build(config, split, device)
    scheduler = build_scheduler(
        optimizer, config.train, steps_per_epoch(len(split), config.train.micro_batch, config.train.accumulation)
    )
    trainer = Trainer(model, optimizer, scheduler, ema, choose_precision(device, config.train.amp), config.train)
    trainer.run_epoch(split, epoch=0, seed=0)  # warm-up epoch (allocator, lazy init)
    _sync(device)
    started = time.perf_counter()
    trainer.run_epoch(split, epoch=1, seed=0).means()
    _sync(device)
    return len(split) / (time.perf_counter() - started)


def plain_epoch(config: RunConfig, split: SplitTensors, device: torch.device) -> float:
    tc = config.train
    model, optimizer, ema = build(config, split, device)
    precision = choose_precision(device, tc.amp)
    scaler = precision.scaler()

    def one_epoch(epoch: int) -> None:
        model.train()
        batches = micro_batches(len(split), tc.micro_batch, 0, epoch)
        for i, index in enumerate(batches):
            batch = split.batch(index, device)
            x, mask = batch["x"], batch["mask"]
            with precision.autocast():
                out_a, out_b = split_halves(model(torch.cat([x, x]), torch.cat([mask, mask])))
                la = model.losses(out_a, batch, tc.label_smoothing)
                lb = model.losses(out_b, batch, tc.label_smoothing)
                loss = (sum(la.values()) + sum(lb.values())) / 2 + tc.rdrop_alpha * sum(
                    model.consistency(out_a, out_b).values()
                )
            scaler.scale(loss / tc.accumulation).backward()
            if (i + 1) % tc.accumulation == 0 or i + 1 == len(batches):
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_norm)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                ema.update_parameters(model)

    one_epoch(0)
    _sync(device)
    started = time.perf_counter()
    one_epoch(1)
    _sync(device)
    return len(split) / (time.perf_counter() - started)


def telemetry_epochs(
    config: RunConfig, split: SplitTensors, device: torch.device, rounds: int
) -> list[tuple[float, float, float]]:
    """(seconds with telemetry, seconds without, seconds of telemetry after the last step) of checkpoint epochs
    run back to back on one trainer, on and off in turn, so both see the same load and the same weights' age."""
    model, optimizer, ema = build(config, split, device)
    scheduler = build_scheduler(
        optimizer, config.train, steps_per_epoch(len(split), config.train.micro_batch, config.train.accumulation)
    )
    trainer = Trainer(model, optimizer, scheduler, ema, choose_precision(device, config.train.amp), config.train)
    trainer.run_epoch(split, epoch=0, seed=0)  # warm-up epoch (allocator, lazy init)
    pairs = []
    with tempfile.TemporaryDirectory() as folder, SummaryWriter(folder) as writer:
        out = RunDir(folder)
        for index in range(rounds):
            times = []
            for enabled in (True, False):
                telemetry = RunTelemetry(out, trainer, writer, epochs_total=2 * rounds + 1, enabled=enabled)
                epoch = 1 + 2 * index + (not enabled)
                _sync(device)
                started = time.perf_counter()
                tally = EpochTally()
                telemetry.start_epoch(tally, checkpoint=True)
                tally = trainer.run_epoch(split, epoch=epoch, seed=0, tally=tally)
                _sync(device)
                after_steps = time.perf_counter()
                # Training losses stand in for the validation losses, which the real run computes either way.
                record = {
                    "epoch": epoch,
                    "seconds": after_steps - started,
                    "train_loss": tally.means(),
                    "val": {"loss": tally.means()},
                }
                telemetry.finish_epoch(record, tally)
                append_metrics(out.metrics_log, record)
                for name, obj in telemetry.checkpoint_files(epoch).items():
                    write_json(out.root / name, obj)
                telemetry.report_progress()
                _sync(device)
                times.append((time.perf_counter() - started, time.perf_counter() - after_steps))
            pairs.append((times[0][0], times[1][0], times[0][1]))
    return pairs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating measurements per side (loop: the best counts; telemetry: the median pair)",
    )
    parser.add_argument("--parts", nargs="+", choices=("loop", "telemetry"), default=["loop", "telemetry"])
    args = parser.parse_args()
    device = resolve_device("auto")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.presets:
        config = PRESETS[name]
        split = synthetic_split(args.samples, config.encoder.dim, config.encoder.max_segments)
        shape = f"{name:6s} micro_batch {config.train.micro_batch} x accumulation {config.train.accumulation}"
        if "loop" in args.parts:
            ours, plain = [], []
            for _ in range(args.rounds):  # alternating, so load from other processes hits both sides alike
                ours.append(redheart_epoch(config, split, device))
                plain.append(plain_epoch(config, split, device))
            best_ours, best_plain = max(ours), max(plain)
            print(
                f"{shape}: redheart {best_ours:8.1f} samples/s, plain {best_plain:8.1f} samples/s,"
                f" ratio {best_ours / best_plain:.3f}"
            )
        if "telemetry" in args.parts:
            pairs = telemetry_epochs(config, split, device, args.rounds)
            ratio = statistics.median(off / on for on, off, _ in pairs)
            on, off = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
            steps = steps_per_epoch(len(split), config.train.micro_batch, config.train.accumulation)
            print(
                f"{shape}: checkpoint epoch of {steps} optimizer steps, median of {len(pairs)} pairs: telemetry on "
                f"{len(split) / on:8.1f} samples/s, off {len(split) / off:8.1f} samples/s, "
                f"ratio {ratio:.3f} (target >= 0.95); "
                f"telemetry after the last step {statistics.median(p[2] for p in pairs) * 1e3:.1f} ms per checkpoint"
            )


if __name__ == "__main__":
    main()
