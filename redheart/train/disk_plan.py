"""The disk plan: the bytes a whole pipeline leaves in its run folder, folder by folder, before it starts.

Tensor files are sized from the real model built on the meta device (every tensor's shape and dtype, the
checkpoint dtype, the safetensors header of every file) and the run's settings: epochs and checkpoint_every
(epoch checkpoints), the EMA, the resume state's two slots (the live one and the previous one, each with
the weights, the EMA copy and the optimizer state), the sweep's trials (whose resume states are dropped
unless sweep.keep_trial_resume is set), the final model and the embeddings (records x segments x dim).
Logs, reports and the other JSON files do not scale with the model; they are counted with the per-epoch,
per-checkpoint and per-phase sizes measured on a small-preset run (the constants below, and each selection
phase's folder in redheart.core.phases). Folder and file names are RunDir's.

Nothing a pipeline writes is deleted before the end except the finished trials' resume states, and the
main resume state only appears after the sweep, so the bytes left at the end are also the peak.
`ensure_disk_space` refuses to start `train` or `sweep` when the free space is below what is still to
be written.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from redheart.config import RunConfig
from redheart.core.checkpoint_files import DiskFullError, stored_metadata
from redheart.core.phases import PHASES
from redheart.core.rundir import RunDir
from redheart.data.reader import DataFile
from redheart.model.groups import GROUPS, group_state_dict
from redheart.model.model import RedHeartModel
from redheart.train.memory.strategy import strategy
from redheart.train.state.checkpoints import checkpoint_dtype

# Files whose size follows the number of modules, epochs and checkpoints, never the parameter count: measured on
# a small-preset pipeline (CPU, telemetry on, 8 epochs, a checkpoint every 2, a 3-trial sweep of 2 epochs).
EPOCH_LOG_BYTES = 12_200 + 8_400  # one metrics.jsonl line + the epoch's TensorBoard scalars
CHECKPOINT_FILE_BYTES = 18_700 + 16_400 + 1_000  # metrics.json, module_stats.json, manifest.json
CHECKPOINT_LOG_BYTES = 19_300  # the module statistics' TensorBoard scalars
PROGRESS_BYTES = (2_450, 195)  # a progress report: fixed part, and per epoch of history it covers
SWEEP_OUTPUT_BYTES = (100_000, 1_800)  # curves.png, choice.json; results.json and .csv per trial epoch
# The plan names folders relative to the run folder: RunDir's names, on an empty root.
LAYOUT = RunDir("")
RUN_FILES = tuple(path.name for path in (LAYOUT.config, LAYOUT.baselines, LAYOUT.test_results))
RUN_FILE_BYTES = 99_000
FINAL_MODEL_FILE_BYTES = 65_000  # calibrators.json, config.json, manifest.json, README.md
LOG_FILES = tuple(path.name for path in (LAYOUT.tensorboard, LAYOUT.progress, LAYOUT.metrics_log))
TORCH_SAVE_PER_TENSOR = 280  # torch.save's zip entry and pickle record per tensor (training.pt)
RNG_AND_SCHEDULER_BYTES = 8_000  # CPU RNG state (5,056 bytes), scheduler and loss-scaler state in training.pt
_DTYPE_NAMES = {
    torch.float32: "F32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
GB = 10**9


@dataclass(frozen=True)
class DiskLine:
    folder: str  # relative to the run folder
    what: str
    bytes: int


@dataclass(frozen=True)
class DiskPlan:
    preset: str
    parameters: int
    optimizer: str  # "adamw" or "adamw8bit": the layout of the resume state's optimizer state
    lines: tuple[DiskLine, ...]

    @property
    def total(self) -> int:
        return sum(line.bytes for line in self.lines)

    def by_folder(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for line in self.lines:
            out[line.folder] = out.get(line.folder, 0) + line.bytes
        return out


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """The size of the safetensors file of `tensors` (meta tensors will do): 8 bytes of header length, the JSON
    header padded to 8 bytes, then the raw data."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    # safetensors lays tensors out by alignment (largest element first), then by name.
    for name, tensor in sorted(tensors.items(), key=lambda item: (-item[1].element_size(), item[0])):
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = len(json.dumps(header, separators=(",", ":")))
    return 8 + math.ceil(text / 8) * 8 + offset


def _as(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.dtype == torch.float32 else v for k, v in state.items()}


def weights_bytes(model: RedHeartModel, preset: str, dtype: torch.dtype) -> int:
    """One modular checkpoint's safetensors files (one per group), fp32 tensors stored as `dtype`."""
    return sum(
        safetensors_bytes(_as(group_state_dict(model, g), dtype), stored_metadata({"group": g, "preset": preset}))
        for g in GROUPS
    )


def training_state_bytes(model: RedHeartModel, optimizer: str) -> int:
    """training.pt of a resume slot: the optimizer state (memory_plan's byte count per layout), the scheduler and
    the RNG states, and torch.save's record per tensor (fp32 AdamW: two moments and a step per parameter;
    8-bit AdamW: two moments and their two block scales)."""
    from redheart.train.memory.plan import optimizer_state_bytes

    params = list(model.parameters())
    per_param = {"adamw": 3, "adamw8bit": 4}[optimizer]
    return (
        optimizer_state_bytes(params, optimizer)
        + RNG_AND_SCHEDULER_BYTES
        + TORCH_SAVE_PER_TENSOR * per_param * len(params)
    )


def resume_slot_bytes(model: RedHeartModel, optimizer: str, ema: bool) -> int:
    """One resume slot at an epoch end: model.safetensors, ema.safetensors, training.pt (no gradients: the
    window is complete), state.json."""
    state = model.state_dict()
    total = (
        safetensors_bytes(state) + 16 + training_state_bytes(model, optimizer) + 2_000
    )  # empty grads file, state.json
    if ema:  # the EMA's state (train/ema.py): "module."-prefixed tensors and its two step counters
        counter = torch.zeros((), dtype=torch.int64)
        ema_state = {f"module.{k}": v for k, v in state.items()} | {"n_averaged": counter, "pending_steps": counter}
        total += safetensors_bytes(ema_state)
    return total


def _slots(saves: int) -> int:
    """Resume slots left after `saves` saves: the live one and, from the second save on, the previous one."""
    return min(2, saves)


def plan_disk(config: RunConfig, records: int, data_bytes: int, optimizer: str | None = None) -> DiskPlan:
    """The plan for `records` texts whose prepared data take `data_bytes`; `optimizer` None: the layout of
    config.train.memory, and for "auto" fp32 AdamW (the standard and swap strategies'; saving's 8-bit state is
    smaller), so the plan is never short."""
    tc, sweep, enc = config.train, config.sweep, config.encoder
    sweep_folder = LAYOUT.sweep.name
    if optimizer is None:
        optimizer = "adamw" if tc.memory == "auto" else strategy(tc.memory).optimizer
    with torch.device("meta"):
        model = RedHeartModel(config.model, enc.dim, enc.max_segments)
    ema = tc.ema_decay > 0
    store = checkpoint_dtype(tc.checkpoint_dtype)
    slot = resume_slot_bytes(model, optimizer, ema)
    ids = 36 * records  # index.json: a quoted 32-character content id per record
    embeddings = records * enc.max_segments * (enc.dim * 4 + 1) + 200 + ids
    lines = [
        DiskLine(LAYOUT.data.name, "prepared records, rejections, split (as big as the input)", data_bytes),
        DiskLine(
            LAYOUT.embeddings.name,
            f"{records} records x {enc.max_segments} segments x {enc.dim} fp32 + mask",
            embeddings,
        ),
    ]
    if tc.lr is None:  # the pipeline sweeps only when no rate is set
        trials = config.sweep.trials
        fixed, per_epoch = SWEEP_OUTPUT_BYTES
        logs = trials * sweep.epochs * (EPOCH_LOG_BYTES + per_epoch) + fixed
        lines.append(
            DiskLine(sweep_folder, f"{trials} trials x {sweep.epochs} epochs of metrics and logs, results", logs)
        )
        if sweep.keep_trial_resume:
            kept = trials * _slots(sweep.epochs) * slot
            lines.append(DiskLine(sweep_folder, f"{trials} trials' resume states kept (sweep.keep_trial_resume)", kept))
    saved = tc.epochs // tc.checkpoint_every
    weights = weights_bytes(model, config.preset, store)
    stored = f"{weights / GB:.3f} GB ({tc.checkpoint_dtype})"
    checkpoints = saved * (weights + CHECKPOINT_FILE_BYTES)
    lines.append(DiskLine(LAYOUT.checkpoints.name, f"{saved} epoch checkpoints x {stored}", checkpoints))
    if ema:  # metrics.json and the manifest, no module statistics
        lines.append(DiskLine(LAYOUT.checkpoints.name, f"EMA checkpoint, {stored}", weights + 18_700 + 900))
    slots = _slots(tc.epochs)
    about = f"{slots} slots x {slot / GB:.3f} GB (fp32 weights, EMA, {optimizer} state)"
    lines.append(DiskLine(LAYOUT.resume.name, about, slots * slot))
    fixed, per_epoch = PROGRESS_BYTES
    at = [tc.checkpoint_every * (k + 1) for k in range(saved)]  # a progress report per checkpoint, and latest.json
    progress = sum(fixed + per_epoch * epoch for epoch in at) + (fixed + per_epoch * at[-1] if at else 0)
    logs = tc.epochs * EPOCH_LOG_BYTES + saved * CHECKPOINT_LOG_BYTES + progress
    lines.append(DiskLine("logs", f"{tc.epochs} epochs of metrics.jsonl, TensorBoard, progress reports", logs))
    final = weights_bytes(model, config.preset, torch.float32) + FINAL_MODEL_FILE_BYTES
    lines.append(DiskLine(LAYOUT.final_model.name, "the chosen model, fp32, with its calibrators", final))
    for phase in PHASES:
        if phase.disk_bytes is not None:
            lines.append(DiskLine(phase.paths(LAYOUT)[0].name, "JSON, Markdown, plots", phase.disk_bytes))
    lines.append(DiskLine("run files", ", ".join(RUN_FILES), RUN_FILE_BYTES))
    parameters = sum(p.numel() for p in model.parameters())
    return DiskPlan(config.preset, parameters, optimizer, tuple(lines))


def input_size(run: RunDir, data: Path | None = None) -> tuple[int, int]:
    """(records, bytes of the prepared data): measured in the run folder once prepared, else from the input file
    (a gzip file's uncompressed size); `data` None: the bundled data set."""
    if run.split_manifest.exists():
        split = json.loads(run.split_manifest.read_text(encoding="utf-8"))
        # A study point's manifest lists only train and val: it must never hold test ids.
        records = sum(len(split.get(name, ())) for name in ("train", "val", "test"))
        return records, folder_bytes(run.data)
    if data is None:
        from redheart.data.schema import bundled_data_path

        data = bundled_data_path()
    with DataFile.open(data) as stream:
        records = sum(1 for _ in stream.items())
        return records, stream.bytes_read()


def plan_for_run(run: RunDir, config: RunConfig, optimizer: str | None = None, data: Path | None = None) -> DiskPlan:
    records, data_bytes = input_size(run, data)
    return plan_disk(config, records, data_bytes, optimizer)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size; missing: 0), as `du -sb` counts file contents."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def present_bytes(run: RunDir, folder: str) -> int:
    """Bytes already in one of the plan's folders ("logs" and "run files" gather several entries)."""
    names = {"logs": LOG_FILES, "run files": RUN_FILES}.get(folder, (folder,))
    return sum(folder_bytes(run.root / name) for name in names)


def remaining_bytes(plan: DiskPlan, run: RunDir) -> int:
    """What the pipeline has still to write: per folder, the plan less what is already there."""
    return sum(max(0, planned - present_bytes(run, folder)) for folder, planned in plan.by_folder().items())


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


class NotEnoughDisk(DiskFullError):
    """Free space below what the disk plan says the pipeline still writes; nothing was started."""


def ensure_disk_space(run: RunDir, config: RunConfig, phase: str, optimizer: str | None = None) -> DiskPlan:
    """Raise NotEnoughDisk, naming needed and free bytes and what to change, when the run's file system has less
    free space than the pipeline still has to write; `config.train.check_disk` False skips the check."""
    plan = plan_for_run(run, config, optimizer)
    if not config.train.check_disk:
        return plan
    needed, free = remaining_bytes(plan, run), free_bytes(run.root)
    if free >= needed:
        return plan
    folders = ", ".join(
        f"{folder} {size / GB:.2f} GB" for folder, size in sorted(plan.by_folder().items(), key=lambda kv: -kv[1])[:3]
    )
    cuts = []
    if config.train.checkpoint_dtype != "bfloat16":
        cuts.append("--set train.checkpoint_dtype=bfloat16 (halves the checkpoints)")
    cuts.append(f"--set train.checkpoint_every={config.train.checkpoint_every * 2} (half as many checkpoints)")
    if config.sweep.keep_trial_resume:
        cuts.append("--set sweep.keep_trial_resume=false")
    raise NotEnoughDisk(
        f"{phase} not started: the {config.preset} pipeline in {run.root} still needs {needed / GB:.2f} GB "
        f"(largest: {folders}) but {free / GB:.2f} GB are free there. Free {(needed - free) / GB:.2f} GB, or write "
        f"less: {'; '.join(cuts)}. `redheart disk --run {run.root}` shows the plan; --set train.check_disk=false "
        "skips this check."
    )


def format_disk_plan(plan: DiskPlan, run: RunDir | None = None) -> str:
    lines = [f"disk plan, preset {plan.preset} ({plan.parameters:,} parameters; resume state with {plan.optimizer}):"]
    width = max(len(line.folder) for line in plan.lines)
    for line in plan.lines:
        size = f"{line.bytes / GB:10.3f} GB" if line.bytes >= GB // 10 else f"{line.bytes / 10**6:10.3f} MB"
        lines.append(f"  {line.folder:<{width}}  {size}  {line.what}")
    lines.append(f"  {'total':<{width}}  {plan.total / GB:10.3f} GB  left at the end, which is also the peak")
    if run is not None:
        needed = remaining_bytes(plan, run)
        lines.append(
            f"still to write in {run.root}: {needed / GB:.3f} GB; free there: {free_bytes(run.root) / GB:.3f} GB"
        )
    return "\n".join(lines)
