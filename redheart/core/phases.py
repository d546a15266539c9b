"""The phases of a run, declared once, in pipeline order: what each reads and writes, its command, its report
section and its fixed share of the disk plan. The CLI, the pipeline, the report and the disk plan read them here.

Outputs are RunDir attribute names ("model_files.card" reaches into the final-model folder), so a phase's files
are named by RunDir alone; `producer` answers which phase writes a path, for the messages that say what to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from redheart.core.rundir import RunDir


@dataclass(frozen=True)
class Phase:
    name: str
    command: str  # the `redheart` subcommand that runs it alone
    help: str  # its line in `redheart --help`
    inputs: tuple[str, ...]  # the phases whose outputs it reads
    outputs: tuple[str, ...]  # RunDir attributes it writes, the folder the disk plan counts first
    section: str | None = None  # the title of its report section, if it has one of its own
    pipeline: bool = True  # part of `redheart pipeline`
    disk_bytes: int | None = None  # its folder's bytes where the disk plan has a fixed estimate (JSON, plots)
    locks: bool = True  # holds the run folder's lock while it runs (redheart.core.runlock)

    def paths(self, run: RunDir) -> list[Path]:
        found = []
        for output in self.outputs:
            value: object = run
            for attribute in output.split("."):
                value = getattr(value, attribute)
            assert isinstance(value, Path), output
            found.append(value)
        return found


# Sizes of the selection phases' folders: measured on a small-preset pipeline (see redheart.train.disk_plan).
PHASES: tuple[Phase, ...] = (
    Phase(
        "prepare",
        "prepare",
        "validate, de-duplicate and split a data set into a run folder",
        inputs=(),
        outputs=("data", "config"),
        section="Data",
    ),
    Phase("encode", "encode", "embed the run's texts (cached on disk)", inputs=("prepare",), outputs=("embeddings",)),
    Phase(
        "sweep",
        "sweep",
        "learning-rate sweep; train uses its choice when no rate is given",
        inputs=("encode",),
        outputs=("sweep",),
        section="Learning-rate sweep",
    ),
    Phase(
        "train",
        "train",
        "train (resumes by itself when the run has a resume state)",
        inputs=("encode", "sweep"),  # the sweep's choice, when no rate is set
        outputs=("checkpoints", "resume", "tensorboard", "progress", "metrics_log", "baselines"),
        section="Training and sweet spots",
    ),
    Phase(
        "analyze",
        "analyze",
        "per-group sweet spots and over-fitting onsets (validation)",
        inputs=("train",),
        outputs=("analysis", "pins"),
        disk_bytes=171_000,
    ),
    Phase(
        "crossover",
        "crossover",
        "assemble groups from their sweet spots; every candidate on validation",
        inputs=("analyze",),
        outputs=("crossover", "final_model"),
        disk_bytes=93_000,
    ),
    Phase(
        "calibrate",
        "calibrate",
        "fit temperature, vector and isotonic calibration, then the verdict's decision rule, on validation",
        inputs=("crossover",),
        outputs=("calibration", "model_files.calibrators", "model_files.decision_rule"),
        section="Calibration",
        disk_bytes=342_000,
    ),
    Phase(
        "evaluate",
        "evaluate",
        "the final test evaluation beside the baselines (reads the test split)",
        inputs=("train", "crossover", "calibrate"),
        outputs=("test_results",),
        section="Crossover and test results",
    ),
    Phase(
        "report",
        "report",
        "HTML + Markdown report and LaTeX tables from the run's files",
        inputs=("prepare", "sweep", "train", "analyze", "crossover", "calibrate", "evaluate", "study"),
        outputs=("report", "model_files.card", "model_files.card_data"),
        disk_bytes=399_000,
        locks=False,
    ),
    # Outside the main job: its points are run folders of their own, meant to run side by side (no lock).
    Phase(
        "study",
        "study",
        "learning curves over model size and training data, on validation (report section)",
        inputs=("encode",),
        outputs=("study",),
        section="Learning curves",
        pipeline=False,
        locks=False,
    ),
)
PHASE = {phase.name: phase for phase in PHASES}
PIPELINE = tuple(phase for phase in PHASES if phase.pipeline)


def producer(run: RunDir, path: Path) -> Phase:
    """The phase that writes `path`: the one whose output is `path` or the nearest folder holding it."""
    path = Path(path)
    best: tuple[int, Phase] | None = None
    for phase in PHASES:
        for output in phase.paths(run):
            if (path == output or output in path.parents) and (best is None or len(output.parts) > best[0]):
                best = (len(output.parts), phase)
    if best is None:
        raise ValueError(f"{path}: no phase writes it")
    return best[1]


def run_first(run: RunDir, path: Path) -> str:
    """What to run when `path` is missing: "run `redheart COMMAND --run RUN` first"."""
    return f"run `redheart {producer(run, path).command} --run {run.root}` first"
