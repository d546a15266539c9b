"""Phase 2, the main training run, as a recipe read top to bottom: setup, data, model and optimizer, resume,
the epoch loop (each epoch validated and checkpointed), and the finish (the EMA checkpoint)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ParamSpec, cast

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
from redheart.train.memory.strategy import MemoryStrategy
from redheart.train.oom import with_halving_batches
from redheart.train.parallel.distributed import Distributed
from redheart.train.parallel.fsdp import drop_summed_grads, host_view, is_sharded
from redheart.train.precision import resolve_device
from redheart.train.signals import StopRequest, TrainingInterrupted, interruption, stop_on_signals
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


class TrainingRecipe:
    """One call of the training run: `train()` runs the stages in order, each leaving its results on `self` for
    the next, in the order the attributes below are listed.

    Train on `run`'s data; outputs go to the run folder `output` (a sweep trial's, a study point's) or to `run`.

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

    # load_data
    train_split: SplitTensors
    val_split: SplitTensors
    baselines: dict[str, Any] | None  # computed here, written once the disk check has passed
    # build_model_and_optimizer: the parameters are initialised from `seed` before anything else draws from it
    model: RedHeartModel
    trainer: Trainer
    memory: MemoryStrategy
    # resume: where this call starts; `micro_done` then counts the current epoch's micro-steps
    identity: dict[str, Any]
    start_epoch: int
    start_sample: int
    micro_done: int
    tally: EpochTally
    # run_epochs (`stop`) and open_epoch_loop: what the loop reports to; `counted`: the trainer's micro-steps seen
    stop: StopRequest
    train_data: SplitTensors
    writer: SummaryWriter | None  # rank 0 only
    telemetry: RunTelemetry
    bar: Any  # tqdm
    counted: int
    record: dict[str, Any]  # the last epoch's record

    def __init__(
        self,
        run: RunDir,
        config: RunConfig,
        *,
        lr: float | None = None,
        epochs: int | None = None,
        seed: int | None = None,
        output: RunDir | None = None,
        save_checkpoints: bool = True,
        progress: bool = True,
        resume_every: int = 0,
        faults: Faults = NO_FAULTS,
        distributed: Distributed | None = None,
        save_resume_state: bool = True,
    ) -> None:
        """Setup: the settings of this call resolved; nothing is read but the sweep's choice, nothing written."""
        self.run, self.config, self.tc = run, config, config.train
        # A separate output folder is a sweep trial's or a study point's: covered by their own disk checks, and
        # resumed by calling them again rather than `redheart train`.
        self.separate_output = output is not None
        self.output = output if output is not None else run
        self.lr, self.lr_source = resolve_lr(run, config, lr)
        self.epochs = self.tc.epochs if epochs is None else epochs
        self.seed = self.tc.seed if seed is None else seed
        self.distributed = distributed or Distributed.single(resolve_device(self.tc.device))
        self.device, self.main = self.distributed.device, self.distributed.is_main
        self.save_checkpoints, self.progress, self.faults = save_checkpoints, progress, faults
        self.resume_every, self.save_resume_state = resume_every, save_resume_state

    def train(self) -> TrainResult:
        self.load_data()
        self.build_model_and_optimizer()
        self.resume()
        self.run_epochs()
        return self.finish()

    def load_data(self) -> None:
        self.train_split, self.val_split = load_split(self.run, "train"), load_split(self.run, "val")
        missing = self.main and not self.run.baselines.exists()
        self.baselines = run_baselines(self.train_split, self.val_split) if missing else None

    def build_model_and_optimizer(self) -> None:
        """The model from `seed`, its trainer and memory strategy; then the disk check, before anything is written."""
        torch.manual_seed(self.seed)
        split = self.train_split
        self.model = RedHeartModel(self.config.model, input_dim=split.input_dim, max_segments=split.max_segments)
        self.trainer, memory = build_trainer(
            self.model, self.config, self.lr, len(split), self.distributed, self.faults
        )
        if self.progress and self.main:
            print(f"memory strategy {memory.name}: {memory.summary()}", file=sys.stderr)
        if self.main and not self.separate_output:
            ensure_disk_space(self.run, self.config, "training", memory.optimizer)
        if self.baselines is not None:
            write_json(self.run.baselines, self.baselines)
        self.memory = memory

    def resume(self) -> None:
        """Continue from the output folder's resume state, if there is one; one of another identity is refused."""
        # The strategy is part of the identity: its optimizer state and numerics differ (8-bit moments, bf16).
        self.identity = {
            "config_hash": config_hash(self.config, self.lr, self.seed),
            "split_hash": split_hash(self.run),
            "memory": self.memory.name,
        }
        self.start_epoch, self.start_sample, self.micro_done, self.tally = 0, 0, 0, EpochTally()
        if has_resume(self.output.resume):
            info = load_resume(self.output.resume, self.trainer, self.identity)
            self.start_epoch, self.micro_done = info["epoch"], info["micro_step"]
            self.tally = EpochTally.from_json(info["tally"])
            self.start_sample = info.get("sample", 0)
            # A window begun by one process: its gradients count once (FSDP shards already split them).
            if not self.main:
                drop_summed_grads(self.model)

    def run_epochs(self) -> None:
        """The epoch loop: train, validate, checkpoint, save the resume state; SIGINT/SIGTERM stop it cleanly."""
        # The handlers are restored however this ends, also when opening the loop fails.
        with stop_on_signals() as self.stop:
            self.open_epoch_loop()
            try:
                for epoch in range(self.start_epoch, self.epochs):
                    seconds, samples = self.train_epoch(epoch)
                    self.validate(epoch, seconds, samples)
                    self.save_epoch_checkpoint(epoch)
                    self.start_sample, self.micro_done, self.tally = 0, 0, EpochTally()
                    self.save_state(epoch + 1, 0, 0, self.tally)
            finally:
                self.bar.close()
                if self.writer is not None:
                    self.writer.close()

    def open_epoch_loop(self) -> None:
        """The training data on the device, TensorBoard, telemetry, the progress bar, and the record so far."""
        tc, main = self.tc, self.main
        per_epoch_micro = len(micro_batches(len(self.train_split), tc.micro_batch, self.seed, 0))
        # On a GPU: batches gathered there, no pageable copy per step.
        self.train_data = self.train_split.to(self.device)
        self.writer = SummaryWriter(str(self.output.tensorboard)) if main else None
        self.telemetry = RunTelemetry(
            self.output,
            self.trainer,
            self.writer,
            self.epochs,
            enabled=tc.telemetry and main,
            gradients=not is_sharded(self.model),
        )
        self.bar = tqdm(
            total=self.epochs * per_epoch_micro,
            initial=self.start_epoch * per_epoch_micro + self.micro_done,
            unit="micro-step",
            disable=not (self.progress and main),
        )
        self.counted = 0
        done = read_metrics(self.output.metrics_log)
        # A finished run called again trains nothing: its last record stands.
        self.record = done[-1] if done and self.start_epoch >= self.epochs else {}

    def checkpoint_due(self, epoch: int) -> bool:
        return self.save_checkpoints and (epoch + 1) % self.tc.checkpoint_every == 0

    def train_epoch(self, epoch: int) -> tuple[float, int]:
        """One epoch's (remaining) micro-steps; its seconds and samples trained."""
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
        started = time.perf_counter()
        samples_before = self.tally.samples
        self.telemetry.start_epoch(self.tally, checkpoint=self.checkpoint_due(epoch))
        after_steps = partial(self.after_steps, epoch)
        self.tally = self.trainer.run_epoch(
            self.train_data, epoch, self.seed, self.start_sample, self.tally, after_steps
        )
        return time.perf_counter() - started, self.tally.samples - samples_before

    def after_steps(self, epoch: int, sample: int, state: EpochTally) -> None:
        """Progress, the periodic resume state, and a clean stop on SIGINT/SIGTERM, after the micro-steps the
        trainer ran since the last call."""
        steps, self.counted = self.trainer.micro_steps - self.counted, self.trainer.micro_steps
        every = self.resume_every
        periodic = every > 0 and (self.micro_done + steps) // every > self.micro_done // every
        self.micro_done += steps
        self.bar.update(steps)
        self.distributed.agree_on_stop(self.stop)
        if self.stop.requested or periodic:
            self.save_state(epoch, sample, self.micro_done, state)
        if self.stop.requested:
            self.distributed.barrier()  # torchrun ends every rank once one exits: not before rank 0 has saved
            if not self.main:
                raise TrainingInterrupted(self.stop, "")
            command = "the same command again"
            if not self.separate_output:
                command = f"redheart train --run {shlex.quote(str(self.run.root))}"
            raise interruption(self.stop, self.output.resume, command)

    def validate(self, epoch: int, seconds: float, samples: int) -> None:
        """The epoch's record (validation, the EMA's headline, timings), logged to metrics.jsonl and TensorBoard."""
        record = epoch_record(epoch + 1, self.trainer, self.tally, self.val_split, self.tc.label_smoothing)
        record.update(seconds=seconds, samples_per_second=samples / seconds, lr_source=self.lr_source)
        record["peak_memory_bytes"] = peak_memory_bytes(self.device)
        self.telemetry.finish_epoch(record, self.tally)
        self.bar.set_postfix(
            loss=f"{record['train_loss']['total']:.4f}", val=f"{sum(record['val']['loss'].values()):.4f}"
        )
        if self.writer is not None:  # rank 0
            append_metrics(self.output.metrics_log, record)
            log_scalars(self.writer, record)
        self.record = record

    def save_epoch_checkpoint(self, epoch: int) -> None:
        if not self.checkpoint_due(epoch):
            return
        weights = host_view(self.model)  # on every rank: a collective under FSDP; None off rank 0
        if self.main:
            weights = cast(RedHeartModel, weights)  # None only off rank 0
            files = self.telemetry.checkpoint_files(epoch + 1, weights)
            save_checkpoint(
                weights,
                self.output.checkpoint(epoch + 1),
                self.record,
                self.config.preset,
                files,
                self.faults,
                dtype=self.tc.checkpoint_dtype,
            )
            self.telemetry.report_progress()

    def save_state(self, epoch: int, sample: int, micro_step: int, state: EpochTally) -> None:
        if not self.save_resume_state:
            return
        tensors = resume_tensors(self.trainer)  # on every rank: under FSDP gathering the shards is a collective
        if self.main:
            info = {
                **self.identity,
                "epoch": epoch,
                "sample": sample,
                "micro_step": micro_step,
                "tally": state.to_json(),
                "lr": self.lr,
                "lr_source": self.lr_source,
                "seed": self.seed,
            }
            save_resume(self.output.resume, self.trainer, info, self.faults, tensors)

    def finish(self) -> TrainResult:
        """The EMA checkpoint, once every rank is done."""
        # A finished run called again trains nothing and keeps its EMA checkpoint: re-saved from the resume state
        # its weights were not bit-identical, and crossover would then see new inputs.
        ema, ema_folder = self.trainer.ema, self.output.ema_checkpoint
        trained = self.start_epoch < self.epochs or not (ema_folder / MANIFEST).exists()
        if ema is not None and self.save_checkpoints and self.record and trained:
            ema_weights = host_view(cast(RedHeartModel, ema.module))
            if self.main:
                weights = cast(RedHeartModel, ema_weights)
                save_checkpoint(weights, ema_folder, self.record, self.config.preset, dtype=self.tc.checkpoint_dtype)
        self.distributed.barrier()  # every rank returns once the outputs are complete
        return TrainResult(
            lr=self.lr,
            lr_source=self.lr_source,
            epochs=self.epochs,
            seed=self.seed,
            final=self.record,
            output=self.output,
            out_of_memory_events=tuple(self.trainer.plan.events),
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
    the memory strategy enters the identity resolved (the recipe adds it); the data settings are covered by the
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


P = ParamSpec("P")


def _run_to_the_end(recipe: Callable[P, TrainingRecipe]) -> Callable[P, TrainResult]:
    """The recipe built and run in one call, with its constructor's typed keywords (checked by mypy at callers)."""

    def train(*args: P.args, **kwargs: P.kwargs) -> TrainResult:
        return recipe(*args, **kwargs).train()

    return train


# Train on a run's data: TrainingRecipe(run, config, lr=..., output=..., ...).train(), as one call.
train = _run_to_the_end(TrainingRecipe)
train.__doc__ = TrainingRecipe.__doc__
