"""Candidate models, as recipes that can be re-built on any split, and the weight-space baselines.

A candidate is one of
  "groups":   each group from its own checkpoint epoch ({group: epoch}), as crossover builds it;
  "folder":   one checkpoint folder (a single epoch, or the EMA weights);
  "average":  the uniform weight average of some checkpoints (the last k, or a greedy soup);
  "ensemble": the probability average of other candidates' fused predictions.
Every non-ensemble candidate carries its own fusion, re-fitted on validation predictions, so all of them
are compared on the same footing: what their groups' weights predict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from safetensors.torch import load_file
from torch import Tensor

from redheart.core.checkpoint_files import MANIFEST, verify_checkpoint
from redheart.core.rundir import RunDir, group_weights
from redheart.model.groups import GROUPS
from redheart.model.kalman import KalmanFusion
from redheart.select.outputs import (
    Fused,
    Outputs,
    SplitOutputs,
    average_fused,
    average_state,
    fit_fusion,
    fuse,
    fused_loss,
    summary,
)


@dataclass
class Candidate:
    name: str
    kind: str  # "groups", "folder", "average" or "ensemble"
    note: str = ""
    epochs: dict[str, int] | None = None  # kind "groups"
    folder: str | None = None  # kind "folder", relative to the run folder
    average: list[int] | None = None  # kind "average"
    members: list[str] | None = None  # kind "ensemble": candidate names
    val: dict[str, Any] = field(default_factory=dict)  # {"loss", "metrics", "headline"} on validation
    fusion: KalmanFusion | None = None

    def to_json(self) -> dict[str, Any]:
        keys = ("name", "kind", "note", "epochs", "folder", "average", "members", "val")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}

    # The fields of a kind, for the code that has checked the kind (they are None for the other kinds).
    def group_epochs(self) -> dict[str, int]:
        return cast(dict[str, int], self.epochs)

    def folder_name(self) -> str:
        return cast(str, self.folder)

    def used_epochs(self) -> set[int]:
        """The checkpoint epochs this candidate is built from (the EMA folder is not an epoch)."""
        folder = Path(self.folder).name if self.folder else ""
        single = {int(folder.split("_")[1])} if folder.startswith("epoch_") else set()
        return set((self.epochs or {}).values()) | set(self.average or []) | single


def outputs_of(candidate: Candidate, cache: SplitOutputs, run: RunDir) -> Outputs:
    """Module outputs of a non-ensemble candidate on the cache's split."""
    if candidate.kind == "groups":
        return cache.of_groups({group: run.checkpoint(epoch) for group, epoch in candidate.group_epochs().items()})
    if candidate.kind == "folder":
        return cache.of_folder(run.root / candidate.folder_name())
    if candidate.kind == "average":
        return cache.of_state(average_state([run.checkpoint(e) for e in cast(list[int], candidate.average)]))
    raise ValueError(f"candidate {candidate.name!r}: kind {candidate.kind!r} has no outputs of its own")


def fused_of(candidate: Candidate, cache: SplitOutputs, run: RunDir, done: dict[str, Fused]) -> Fused:
    """Fused predictions with the candidate's fitted fusion; ensembles average their members' (from `done`)."""
    if candidate.kind == "ensemble":
        return average_fused([done[name] for name in cast(list[str], candidate.members)])
    if candidate.fusion is None:
        raise ValueError(f"candidate {candidate.name!r} has no fitted fusion; score it on validation first")
    return fuse(candidate.fusion, outputs_of(candidate, cache, run))


def group_folders(candidate: Candidate, run: RunDir) -> dict[str, Path] | None:
    """{group: folder} of a candidate made of saved checkpoints; None for averages and ensembles."""
    if candidate.kind == "groups":
        return {group: run.checkpoint(epoch) for group, epoch in candidate.group_epochs().items()}
    if candidate.kind == "folder":
        return {group: run.root / candidate.folder_name() for group in GROUPS}
    return None


def score(candidate: Candidate, cache: SplitOutputs, run: RunDir, steps: int, done: dict[str, Fused]) -> Fused:
    """Fit the candidate's fusion on the (validation) cache, record its summary, return its fused predictions."""
    folders = group_folders(candidate, run)
    if folders is not None:
        candidate.fusion = cache.fitted(folders, steps)[0]
    elif candidate.kind == "average":
        candidate.fusion = fit_fusion(outputs_of(candidate, cache, run), cache.split, steps)
    fused = fused_of(candidate, cache, run, done)
    candidate.val = summary(fused, cache.split)
    done[candidate.name] = fused
    return fused


def checkpoint_scores(run: RunDir, epochs: list[int], cache: SplitOutputs, steps: int) -> dict[int, float]:
    """Validation score of every single checkpoint, each with its own re-fitted fusion."""
    return {epoch: cache.fitted({group: run.checkpoint(epoch) for group in GROUPS}, steps)[1] for epoch in epochs}


def _read_state(folder: Path) -> dict[str, Tensor]:
    verify_checkpoint(folder)
    return {k: v for group in GROUPS for k, v in load_file(str(group_weights(folder, group))).items()}


def greedy_soup(run: RunDir, scores: dict[int, float], cache: SplitOutputs, steps: int) -> tuple[list[int], list[dict]]:
    """Wortsman et al.'s greedy soup: checkpoints by validation score, best first; each joins the weight
    average only if the soup's validation score improves. Returns the ingredients and the trial log."""
    order = sorted(scores, key=lambda e: (scores[e], e))
    first = order[0]
    total = {k: v.double() for k, v in _read_state(run.checkpoint(first)).items()}
    soup, best = [first], scores[first]
    log = [{"epoch": first, "score": best, "accepted": True}]
    for epoch in order[1:]:
        state = _read_state(run.checkpoint(epoch))
        trial = {k: ((total[k] + state[k].double()) / (len(soup) + 1)).float() for k in total}
        outputs = cache.of_state(trial)
        value = fused_loss(fuse(fit_fusion(outputs, cache.split, steps), outputs), cache.split)
        accepted = value < best
        log.append({"epoch": epoch, "score": value, "accepted": accepted})
        if accepted:
            soup.append(epoch)
            best = value
            total = {k: total[k] + state[k].double() for k in total}
    return sorted(soup), log


def baseline_candidates(
    run: RunDir, saved: list[int], scores: dict[int, float], cache: SplitOutputs, k: int, steps: int
) -> list[Candidate]:
    """Best single checkpoint, last checkpoint, EMA weights, uniform average of the last k, greedy soup."""
    best = min(saved, key=lambda e: (scores[e], e))
    last = saved[-1]
    rel = lambda folder: str(Path(folder).relative_to(run.root))  # noqa: E731
    out = [
        Candidate(
            f"best on validation (epoch {best})",
            "folder",
            "the single checkpoint with the lowest validation loss",
            folder=rel(run.checkpoint(best)),
        ),
        Candidate(
            f"last checkpoint (epoch {last})",
            "folder",
            "the weights at the end of training",
            folder=rel(run.checkpoint(last)),
        ),
    ]
    if (run.ema_checkpoint / MANIFEST).exists():
        out.append(
            Candidate(
                "EMA weights",
                "folder",
                "exponential moving average of the weights",
                folder=rel(run.ema_checkpoint),
            )
        )
    tail = saved[-k:]
    out.append(
        Candidate(
            f"average of the last {len(tail)} checkpoints",
            "average",
            f"uniform weight average of epochs {tail}",
            average=tail,
        )
    )
    soup, log = greedy_soup(run, scores, cache, steps)
    tried = len(log)
    out.append(
        Candidate(
            f"greedy soup ({len(soup)} of {tried} checkpoints)",
            "average",
            f"greedy weight soup of epochs {soup}",
            average=soup,
        )
    )
    return out
