"""Phase 2, the main training run, read top to bottom: data, baselines, model, optimizer, epochs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from redheart.config import RunConfig, to_dict
from redheart.core.atomic import read_json, write_json
from redheart.core.checkpoint_files import MANIFEST
from redheart.core.faults import NO_FAULTS, Faults
from redheart.core.rundir import RunDir
from redheart.data.dataset import SplitTensors, load_split, micro_batches, split_hash
from redheart.model.model import RedHeartModel
from redheart.scoring.baselines import run_baselines
from redheart.scoring.metrics import headline
from redheart.train.build_trainer import build_trainer
from redheart.train.disk_plan import ensure_disk_space
from redheart.train.evaluation import evaluate, metrics_of, predict
from redheart.train.oom import with_halving_batches
from redheart.train.parallel.distributed import Distributed
from redheart.train.parallel.fsdp import drop_summed_grads, host_view, is_sharded
from redheart.train.precision import resolve_device
from redheart.train.signals import TrainingInterrupted, interruption, stop_on_signals
from redheart.train.state.checkpoints import save_checkpoint
from redheart.train.state.resume import has_resume, load_resume, resume_tensors, save_resume
from redheart.train.telemetry.records import RunTelemetry, append_metrics, log_scalars, peak_memory_bytes, read_metrics
from redheart.train.trainer import EpochTally, Trainer


@dataclass(frozen=True)
class TrainResult:
    lr: float
    lr_source: str  # "argument", "config", "sweep" or "default"
    epochs: int
    seed: int
    final: dict[str, Any]  # the last epoch's record (train losses, val metrics, EMA headline)
    output: RunDir
    # The trainer's out-of-memory retries (BatchPlan.events): each halved the micro-batch or turned on memory saving.
    out_of_memory_events: tuple[dict[str, Any], ...] = ()


def train(
    run: RunDir,
    config: RunConfig,
    lr: float | None = None,
    epochs: int | None = None,
    seed: int | None = None,
    log_dir: Path | None = None,
    save_checkpoints: bool = True,
    progress: bool = True,
    resume_every: int = 0,
    faults: Faults = NO_FAULTS,
    distributed: Distributed | None = None,
    save_resume_state: bool = True,
) -> TrainResult:
    """Train on `run`'s data; outputs go to `log_dir` (a run-folder layout; a sweep trial) or to `run`.

    A resume state in the output folder is continued from; one from another config or split is refused.
    The state is saved at every epoch end and, with `resume_every` N > 0, every N micro-steps. SIGINT
    or SIGTERM stops after the current micro-step with the state saved (exit code 130 or 143).

    With `distributed` (a torchrun job, distributed.py) every rank calls this; each trains its share of
    every window (parallel/data_parallel.py), and rank 0 alone writes files and shows progress. The state is then
    saved, and a signal obeyed, only at window ends, so it loads with any number of processes. Under FSDP
    (parallel/fsdp.py) each rank holds a shard of the model; checkpoints and the state are gathered whole.

    `save_resume_state` False writes no resume state at all (a measurement that is never resumed: the full
    preset's state is about 23 GB a save); a signal then stops without one.
    """
    tc = config.train
    out = RunDir(log_dir) if log_dir is not None else run
    lr, lr_source = resolve_lr(run, config, lr)
    epochs = tc.epochs if epochs is None else epochs
    seed = tc.seed if seed is None else seed
    distributed = distributed or Distributed.single(resolve_device(tc.device))
    device, main = distributed.device, distributed.is_main

    train_split, val_split = load_split(run, "train"), load_split(run, "val")
    baselines = run_baselines(train_split, val_split) if main and not run.baselines.exists() else None

    torch.manual_seed(seed)
    model = RedHeartModel(config.model, input_dim=train_split.input_dim, max_segments=train_split.max_segments)
    trainer, memory = build_trainer(model, config, lr, len(train_split), distributed, faults)
    if progress and main:
        print(f"memory strategy {memory.name}: {memory.summary()}", file=sys.stderr)
    if main and log_dir is None:  # a sweep trial is covered by the sweep's own check
        ensure_disk_space(run, config, "training", memory.optimizer)
    if baselines is not None:  # written once the disk check has passed: nothing is written before it
        write_json(run.baselines, baselines)

    # The strategy is part of the identity: its optimizer state and numerics differ (8-bit moments, bf16).
    identity = {"config_hash": config_hash(config, lr, seed), "split_hash": split_hash(run), "memory": memory.name}
    start_epoch, start_sample, start_micro, tally = 0, 0, 0, EpochTally()
    if has_resume(out.resume):
        info = load_resume(out.resume, trainer, identity)
        start_epoch, start_micro, tally = info["epoch"], info["micro_step"], EpochTally.from_json(info["tally"])
        start_sample = info.get("sample", 0)
        if not main:  # a window begun by one process: its gradients count once (FSDP shards already split them)
            drop_summed_grads(model)

    def save_state(epoch: int, sample: int, micro_step: int, state: EpochTally) -> None:
        if not save_resume_state:
            return
        tensors = resume_tensors(trainer)  # on every rank: under FSDP gathering the shards is a collective
        if main:
            info = {
                **identity,
                "epoch": epoch,
                "sample": sample,
                "micro_step": micro_step,
                "tally": state.to_json(),
                "lr": lr,
                "lr_source": lr_source,
                "seed": seed,
            }
            save_resume(out.resume, trainer, info, faults, tensors)

    command = f"redheart train --run {shlex.quote(str(run.root))}" if log_dir is None else "the same command again"
    signals = ExitStack()
    stop = signals.enter_context(stop_on_signals())
    micro_done, counted = start_micro, 0  # micro-steps of this epoch, and of the trainer's count seen so far

    def after_steps(epoch: int, sample: int, state: EpochTally) -> None:
        """Progress, the periodic resume state, and a clean stop on SIGINT/SIGTERM, after the micro-steps the
        trainer ran since the last call."""
        nonlocal micro_done, counted
        steps, counted = trainer.micro_steps - counted, trainer.micro_steps
        periodic = resume_every > 0 and (micro_done + steps) // resume_every > micro_done // resume_every
        micro_done += steps
        bar.update(steps)
        distributed.agree_on_stop(stop)
        if stop.requested or periodic:
            save_state(epoch, sample, micro_done, state)
        if stop.requested:
            distributed.barrier()  # torchrun ends every rank once one exits: not before rank 0 has saved
            raise interruption(stop, out.resume, command) if main else TrainingInterrupted(stop, "")

    per_epoch_micro = len(micro_batches(len(train_split), tc.micro_batch, seed, 0))
    train_data = train_split.to(device)  # on a GPU: batches gathered there, no pageable copy per micro-step
    writer = SummaryWriter(str(out.tensorboard)) if main else None
    telemetry = RunTelemetry(
        out, trainer, writer, epochs, enabled=tc.telemetry and main, gradients=not is_sharded(model)
    )
    bar = tqdm(
        total=epochs * per_epoch_micro,
        initial=start_epoch * per_epoch_micro + start_micro,
        unit="micro-step",
        disable=not (progress and main),
    )
    done = read_metrics(out.metrics_log)
    record: dict[str, Any] = done[-1] if done and start_epoch >= epochs else {}
    try:
        for epoch in range(start_epoch, epochs):
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            started = time.perf_counter()
            samples_before = tally.samples
            telemetry.start_epoch(tally, checkpoint=save_checkpoints and (epoch + 1) % tc.checkpoint_every == 0)
            tally = trainer.run_epoch(train_data, epoch, seed, start_sample, tally, partial(after_steps, epoch))
            seconds = time.perf_counter() - started
            record = epoch_record(epoch + 1, trainer, tally, val_split, tc.label_smoothing)
            record.update(
                seconds=seconds, samples_per_second=(tally.samples - samples_before) / seconds, lr_source=lr_source
            )
            record["peak_memory_bytes"] = peak_memory_bytes(device)
            telemetry.finish_epoch(record, tally)
            bar.set_postfix(
                loss=f"{record['train_loss']['total']:.4f}", val=f"{sum(record['val']['loss'].values()):.4f}"
            )
            if writer is not None:  # rank 0
                append_metrics(out.metrics_log, record)
                log_scalars(writer, record)
            if save_checkpoints and (epoch + 1) % tc.checkpoint_every == 0:
                weights = host_view(model)  # on every rank: a collective under FSDP; None off rank 0
                if main:
                    weights = cast(RedHeartModel, weights)  # None only off rank 0
                    files = telemetry.checkpoint_files(epoch + 1, weights)
                    save_checkpoint(
                        weights,
                        out.checkpoint(epoch + 1),
                        record,
                        config.preset,
                        files,
                        faults,
                        dtype=tc.checkpoint_dtype,
                    )
                    telemetry.report_progress()
            start_sample, micro_done, tally = 0, 0, EpochTally()
            save_state(epoch + 1, 0, 0, tally)
    finally:
        signals.close()
        bar.close()
        if writer is not None:
            writer.close()
    # A finished run called again trains nothing and keeps its EMA checkpoint: re-saved from the resume state
    # its weights were not bit-identical, and crossover would then see new inputs.
    ema_missing = not (out.checkpoints / "ema" / MANIFEST).exists()
    if trainer.ema is not None and save_checkpoints and record and (start_epoch < epochs or ema_missing):
        ema_weights = host_view(cast(RedHeartModel, trainer.ema.module))
        if main:
            save_checkpoint(
                cast(RedHeartModel, ema_weights),
                out.checkpoints / "ema",
                record,
                config.preset,
                dtype=tc.checkpoint_dtype,
            )
    distributed.barrier()  # every rank returns once the outputs are complete
    return TrainResult(
        lr=lr,
        lr_source=lr_source,
        epochs=epochs,
        seed=seed,
        final=record,
        output=out,
        out_of_memory_events=tuple(trainer.plan.events),
    )


def resolve_lr(run: RunDir, config: RunConfig, lr: float | None) -> tuple[float, str]:
    """The argument, else config.train.lr, else the sweep's choice, else config.train.default_lr."""
    if lr is not None:
        return float(lr), "argument"
    if config.train.lr is not None:
        return float(config.train.lr), "config"
    choice = run.sweep_choice
    if choice.exists():
        return float(read_json(choice)["lr"]), "sweep"
    return float(config.train.default_lr), "default"


def config_hash(config: RunConfig, lr: float, seed: int) -> str:
    """Identity of the recipe: encoder, model and training settings. The epoch count, device, telemetry
    switch and distributed mode are left out, so a run can be extended, moved, or resumed by other processes;
    the memory strategy enters the identity resolved (train() adds it); the data settings are covered by the
    split hash, and sweep and selection settings do not change what training computes."""
    train = dataclasses.replace(
        config.train, lr=lr, seed=seed, epochs=0, device="any", telemetry=True, memory="any", distributed="any"
    )
    full = to_dict(dataclasses.replace(config, train=train))
    tree = {section: full[section] for section in ("encoder", "model", "train")}
    for stored_only in ("checkpoint_dtype", "check_disk"):  # how outputs are stored, not what training computes
        tree["train"].pop(stored_only)
    if tree["train"]["ema_every"] == 1:  # the EMA of every step, as before the setting existed: the same identity
        tree["train"].pop("ema_every")
    return hashlib.sha256(json.dumps(tree, sort_keys=True, default=str).encode()).hexdigest()


EVAL_BATCH = 256  # validation's batch size, halved on out-of-memory


def epoch_record(
    epoch: int, trainer: Trainer, tally: EpochTally, val: SplitTensors, label_smoothing: float
) -> dict[str, Any]:
    """Train losses, validation with the raw weights, and the EMA weights' fused headline. An out-of-memory error in
    either pass redoes it with half the batch size (with_halving_batches)."""
    device, retry = trainer.precision.device, trainer.can_redo_window
    validation = partial(evaluate, trainer.model, val, label_smoothing=label_smoothing, device=device)
    record: dict[str, Any] = {
        "epoch": epoch,
        "lr": max(group["lr"] for group in trainer.optimizer.param_groups),
        "train_loss": tally.means(),
        "grad_norm": tally.grad_norm_stats(),
        # On the training device even where the weights sit in host memory (swap; a host-side EMA).
        "val": with_halving_batches(validation, EVAL_BATCH, device, f"the validation of epoch {epoch}", retry),
    }
    if trainer.ema is not None:
        trainer.ema.flush(trainer.model)  # the steps not yet averaged in (train.ema_every)
        ema = partial(predict, trainer.ema.module, val, device=device)
        predictions = with_halving_batches(ema, EVAL_BATCH, device, f"the EMA validation of epoch {epoch}", retry)
        record["ema_headline"] = headline(metrics_of(predictions, val)["fused"])
    return record
