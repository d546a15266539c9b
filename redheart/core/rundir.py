"""The layout of one run folder, and of the final-model folder inside it: every phase reads and writes its
artifacts through these names."""

from dataclasses import dataclass
from pathlib import Path

from redheart.core.checkpoint_files import MANIFEST


def group_weights(folder: Path, group: str) -> Path:
    """One module group's weights in a checkpoint folder or the final-model folder."""
    return Path(folder) / f"{group}.safetensors"


@dataclass(frozen=True)
class ModelDir:
    """A final-model folder: self-contained, so `redheart predict`, `redheart.load` and `redheart serve` read it
    without the run folder it came from."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        """Model and encoder settings, input sizes, and what was chosen (in the manifest)."""
        return self.root / "config.json"

    @property
    def manifest(self) -> Path:
        """sha256 of the weights and config.json, written last: the folder is complete when it exists."""
        return self.root / MANIFEST

    @property
    def calibrators(self) -> Path:
        """Calibration fitted on validation, bound to the manifest by its sha256."""
        return self.root / "calibrators.json"

    @property
    def decision_rule(self) -> Path:
        """The verdict's decision rule per served distribution, fitted on validation, bound to the manifest
        and the calibrators by their sha256."""
        return self.root / "decision_rule.json"

    @property
    def card(self) -> Path:
        """The model card (documentation; not in the manifest)."""
        return self.root / "README.md"

    @property
    def card_data(self) -> Path:
        """The model card's facts as JSON (metadata, metrics, rule), for programs."""
        return self.root / "card.json"

    def group_weights(self, group: str) -> Path:
        return group_weights(self.root, group)


@dataclass(frozen=True)
class ResumeSlot:
    """One of the resume folder's two slots: the whole training state, its checksums in `state` written last."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def grads(self) -> Path:
        """The gradients summed so far in an unfinished accumulation window."""
        return self.root / "grads.safetensors"

    @property
    def ema(self) -> Path:
        return self.root / "ema.safetensors"

    @property
    def training(self) -> Path:
        """Optimizer, scheduler, loss-scaler and RNG states (torch.save, loaded with weights_only)."""
        return self.root / "training.pt"

    @property
    def state(self) -> Path:
        """Where training stands and the sha256 of every other file of the slot."""
        return self.root / "state.json"


@dataclass(frozen=True)
class ResumeDir:
    """A run's resume folder (RunDir.resume): two slots a save alternates between, and the pointer to the live one."""

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def pointer(self) -> Path:
        """Names the live slot; switched atomically once a save is complete."""
        return self.root / "current.json"

    @property
    def slots(self) -> tuple[ResumeSlot, ResumeSlot]:
        return self.slot("slot_0"), self.slot("slot_1")

    def slot(self, name: str) -> ResumeSlot:
        return ResumeSlot(self.root / name)


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def clean_records(self) -> Path:
        """Validated, de-duplicated records as JSON Lines, in the input's order."""
        return self.data / "clean.jsonl"

    @property
    def rejected_records(self) -> Path:
        """Every record that failed validation, with its reasons."""
        return self.data / "rejected.jsonl"

    @property
    def duplicates(self) -> Path:
        return self.data / "duplicates.json"

    @property
    def split_manifest(self) -> Path:
        """Ids per split; every later phase reads the split from here and only here."""
        return self.data / "split.json"

    @property
    def data_stats(self) -> Path:
        return self.data / "stats.json"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def embedding_vectors(self) -> Path:
        """Every clean record's segment vectors and mask, in the index's row order."""
        return self.embeddings / "embeddings.safetensors"

    @property
    def embedding_index(self) -> Path:
        """The encoder, the sizes, the record ids in row order and the vectors' file name."""
        return self.embeddings / "index.json"

    @property
    def sweep(self) -> Path:
        return self.root / "sweep"

    @property
    def study(self) -> Path:
        """Learning curves: one run folder per point, then results.json and the plots."""
        return self.root / "study"

    @property
    def sweep_results(self) -> Path:
        """Every rate's score and components, as ranked."""
        return self.sweep / "results.json"

    @property
    def sweep_table(self) -> Path:
        """Every trial's per-epoch rows, one CSV row each."""
        return self.sweep / "results.csv"

    @property
    def sweep_choice(self) -> Path:
        """The chosen learning rate and the reason; training reads its rate from here."""
        return self.sweep / "choice.json"

    @property
    def sweep_curves(self) -> Path:
        return self.sweep / "curves.png"

    @property
    def study_results(self) -> Path:
        """The study's table, fitted curves and sentences, collected from its finished points."""
        return self.study / "results.json"

    @property
    def study_table(self) -> Path:
        """The study's points as CSV, one row per finished point."""
        return self.study / "results.csv"

    def study_curve(self, metric: str) -> Path:
        """The learning-curve plot of one metric."""
        return self.study / f"curve_{metric}.png"

    def study_point(self, index: int, size: str, label: str) -> Path:
        """A study point's run folder; `label` names its training subset in a file-name-safe form."""
        return self.study / f"point_{index}_{size}_{label}"

    def study_check(self, cap_factor: int, point: str) -> Path:
        """The convergence check's run folder of the point folder named `point`, trained with `cap_factor` times the
        step cap."""
        return self.study / f"check_x{cap_factor}_{point}"

    def study_lr_sweep(self, size: str) -> Path:
        """The run folder of one size's learning-rate sweep."""
        return self.study / f"lr_{size}"

    def study_probe(self, label: str) -> Path:
        """The baselines fitted on one training subset, shared by every size's point on it."""
        return self.study / "probes" / f"{label}.json"

    @property
    def point_record(self) -> Path:
        """In a study point's folder: the finished point's numbers and fingerprint, written last."""
        return self.root / "point.json"

    @property
    def inputs_fingerprint(self) -> Path:
        """In a study point's or a size's learning-rate sweep folder: what it is trained from, written before it
        trains, so an unfinished folder made from other inputs is not continued."""
        return self.root / "fingerprint.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def pins(self) -> Path:
        """Checkpoints that must outlive pruning, as the sweet-spot analysis chose them."""
        return self.checkpoints / "pins.json"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch_{epoch:03d}"

    @property
    def ema_checkpoint(self) -> Path:
        """The EMA weights at the end of training, beside the epoch checkpoints."""
        return self.checkpoints / "ema"

    def module_stats(self, epoch: int) -> Path:
        """The module statistics sealed into a checkpoint (weights, gradients, activations per module)."""
        return self.checkpoint(epoch) / "module_stats.json"

    @property
    def resume(self) -> Path:
        """The rolling resume state; its files by name: ResumeDir(run.resume)."""
        return self.root / "resume"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def progress(self) -> Path:
        """Progress reports: one at every checkpoint, and the latest again."""
        return self.root / "progress"

    def progress_report(self, epoch: int) -> Path:
        return self.progress / f"epoch_{epoch:03d}.json"

    @property
    def progress_latest(self) -> Path:
        """A copy of the newest progress report, at a name that does not move."""
        return self.progress / "latest.json"

    @property
    def metrics_log(self) -> Path:
        """One JSON object per epoch, appended as training goes."""
        return self.root / "metrics.jsonl"

    @property
    def baselines(self) -> Path:
        return self.root / "baselines.json"

    @property
    def analysis(self) -> Path:
        return self.root / "analysis"

    @property
    def analysis_results(self) -> Path:
        return self.analysis / "analysis.json"

    @property
    def analysis_curves(self) -> Path:
        return self.analysis / "curves.png"

    @property
    def analysis_summary(self) -> Path:
        return self.analysis / "analysis.md"

    @property
    def crossover(self) -> Path:
        return self.root / "crossover"

    @property
    def crossover_candidates(self) -> Path:
        """Every candidate model of the crossover, its validation scores, and the plan it was built by."""
        return self.crossover / "candidates.json"

    def crossover_fusion(self, index: int) -> Path:
        """The fusion weights of the candidate at `index` of crossover_candidates (when it has its own)."""
        return self.crossover / "fusion" / f"{index:02d}.safetensors"

    @property
    def crossover_summary(self) -> Path:
        return self.crossover / "crossover.md"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration"

    @property
    def calibrators(self) -> Path:
        """The calibrators fitted on validation (the final model's folder holds a copy, ModelDir.calibrators)."""
        return self.calibration / "calibrators.json"

    def calibration_report(self, split: str) -> Path:
        """The calibration metrics of every method on `split` ("val", or "test" when the test split is read)."""
        return self.calibration / f"{split}_report.json"

    def reliability_plot(self, split: str, target: str) -> Path:
        return self.calibration / f"reliability_{split}_{target}.png"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def report_page(self) -> Path:
        return self.report / "index.html"

    @property
    def report_markdown(self) -> Path:
        return self.report / "report.md"

    @property
    def report_parameters(self) -> Path:
        """The parameter table, computed from the run's config on the meta device."""
        return self.report / "parameters.json"

    @property
    def report_images(self) -> Path:
        """The plots the report shows, copied (or drawn) into the report folder."""
        return self.report / "img"

    @property
    def report_sweep_curves(self) -> Path:
        """The report's copy of sweep_curves."""
        return self.report_images / "sweep_curves.png"

    @property
    def report_analysis_curves(self) -> Path:
        """The report's copy of analysis_curves."""
        return self.report_images / "analysis_curves.png"

    @property
    def report_training_curves(self) -> Path:
        """Losses per epoch, drawn from metrics_log when there is no analysis."""
        return self.report_images / "training_curves.png"

    def report_study_curve(self, metric: str) -> Path:
        """The report's copy of study_curve(metric)."""
        return self.report_images / f"study_{metric}.png"

    @property
    def report_tables(self) -> Path:
        """The report's LaTeX tables."""
        return self.report / "tables"

    def report_table(self, name: str) -> Path:
        """One LaTeX table, named by its `latex_name`."""
        return self.report_tables / f"{name}.tex"

    @property
    def final_model(self) -> Path:
        return self.root / "final_model"

    @property
    def model_files(self) -> ModelDir:
        """The final-model folder's files by name."""
        return ModelDir(self.final_model)

    @property
    def decision_rule(self) -> Path:
        """The decision rules fitted on validation: the final model's (also in final_model/) and the probe's."""
        return self.calibration / "decision_rule.json"

    @property
    def lock(self) -> Path:
        """The lock file one process at a time holds (redheart.core.runlock)."""
        return self.root / ".lock"

    def sweep_trial_lock(self, trial: int) -> Path:
        """The lock a sweep trial run alone (`redheart sweep --trial K`) holds, so two trials can run at once."""
        return self.sweep / f".trial_{trial}.lock"

    @property
    def test_results(self) -> Path:
        """The one reading of the test split: every model and baseline with bootstrap intervals."""
        return self.root / "test_results.json"
