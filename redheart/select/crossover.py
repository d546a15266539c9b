"""Phase 4: parameter crossover, its refinements and shifted-variant ensemble, and the baselines it must beat.

Everything here is decided on validation: the crossover model takes each group from its sweet-spot
epoch, a greedy pass may move one group's epoch to a neighbouring checkpoint when validation improves,
and every candidate's fusion is re-fitted on validation predictions. The test split is never read here
(redheart.evaluate.final reads it once, for every candidate at the same time).

Writes RunDir.crossover/candidates.json (recipes + validation results), fusion/<n>.safetensors (each
candidate's fitted fusion), crossover.md, pins the epochs the candidates use, and saves the best
single-network candidate as RunDir.final_model.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import partial
from typing import Any

from safetensors.torch import load_file

from redheart.architecture import TARGET_DIMS
from redheart.config import RunConfig
from redheart.core.atomic import atomic_open, read_json, write_json, write_with
from redheart.core.phases import run_first
from redheart.core.rundir import RunDir
from redheart.data.dataset import load_split
from redheart.model.groups import GROUPS
from redheart.model.kalman import KalmanFusion
from redheart.model.model import RedHeartModel
from redheart.scoring.metrics import SUMMARY
from redheart.select.candidates import Candidate, baseline_candidates, checkpoint_scores, score
from redheart.select.final_model import build_candidate_model, save_final_model
from redheart.select.freshness import crossover_inputs
from redheart.select.outputs import SplitOutputs
from redheart.select.pins import pin_checkpoints, saved_epochs
from redheart.select.sweet_spots import analyze, shifted_epoch
from redheart.train.state.checkpoints import save_tensors

CROSSOVER = "crossover (sweet spots)"
REFINED = "crossover, refined on validation"
ENSEMBLE = "ensemble of the shifted variants"


@dataclass(frozen=True)
class CrossoverResult:
    sweet_spots: dict[str, int]
    refined: dict[str, int]
    refine_log: list[dict]
    candidates: list[Candidate]
    best: str  # lowest validation loss of all candidates
    final_model: str  # lowest validation loss among single networks (saved as RunDir.final_model)
    conclusion: str


def variant_name(shift: int) -> str:
    return f"crossover shifted {shift:+d} epochs"


def refine(
    run: RunDir, start: dict[str, int], saved: list[int], cache: SplitOutputs, steps: int, rounds: int
) -> tuple[dict[str, int], list[dict]]:
    """Greedy: move one group at a time to the better neighbouring checkpoint while validation improves."""

    def value(epochs: dict[str, int]) -> float:
        return cache.fitted({g: run.checkpoint(e) for g, e in epochs.items()}, steps)[1]

    current, best = dict(start), value(start)
    log: list[dict] = [{"epochs": dict(current), "score": best, "move": None}]
    for _ in range(rounds):
        moved = False
        for group in GROUPS:
            at = saved.index(current[group])
            for neighbour in {saved[max(0, at - 1)], saved[min(len(saved) - 1, at + 1)]} - {current[group]}:
                trial = {**current, group: neighbour}
                trial_value = value(trial)
                if trial_value < best:
                    log.append(
                        {
                            "epochs": dict(trial),
                            "score": trial_value,
                            "move": f"{group}: {current[group]} -> {neighbour}",
                        }
                    )
                    current, best, moved = trial, trial_value, True
        if not moved:
            break
    return current, log


def crossover(run: RunDir, config: RunConfig) -> CrossoverResult:
    """Build and score every candidate on validation; write the results, pins and the final model."""
    options = config.select
    spots = analyze(run, config).sweet_spots
    saved = saved_epochs(run)
    val = load_split(run, "val")
    model = RedHeartModel(config.model, input_dim=val.input_dim, max_segments=val.max_segments)
    cache = SplitOutputs(model, val, options.batch_size, config.train.device)
    spots = {group: spots.get(group, saved[-1]) for group in GROUPS}  # a group without a loss follows the last epoch

    refined, refine_log = refine(run, spots, saved, cache, options.fusion_steps, options.refine_rounds)
    candidates = [
        Candidate(CROSSOVER, "groups", "every group from its own sweet-spot epoch", epochs=spots),
        Candidate(REFINED, "groups", f"{len(refine_log) - 1} greedy moves to neighbouring checkpoints", epochs=refined),
    ]
    variants = []
    for shift in options.shifts:
        epochs = {g: shifted_epoch(e, shift, saved) for g, e in spots.items()}
        if shift == 0:
            variants.append(CROSSOVER)
            continue
        variants.append(variant_name(shift))
        candidates.append(
            Candidate(
                variant_name(shift),
                "groups",
                "every sweet spot shifted, clamped to the saved checkpoints",
                epochs=epochs,
            )
        )
    candidates.append(
        Candidate(ENSEMBLE, "ensemble", f"probability average of {len(variants)} variants", members=variants)
    )
    scores = checkpoint_scores(run, saved, cache, options.fusion_steps)
    candidates += baseline_candidates(run, saved, scores, cache, options.average_last, options.fusion_steps)

    done: dict = {}
    for candidate in candidates:
        score(candidate, cache, run, options.fusion_steps, done)
    best = min(candidates, key=lambda c: c.val["loss"])
    single = min((c for c in candidates if c.kind != "ensemble"), key=lambda c: c.val["loss"])
    result = CrossoverResult(spots, refined, refine_log, candidates, best.name, single.name, conclusion(candidates))
    write_crossover(run, result, scores, inputs=crossover_inputs(run, config))
    pin_checkpoints(run, "crossover", {f"{c.name}: epoch {e}": e for c in candidates for e in sorted(c.used_epochs())})
    final = build_candidate_model(single, run, model)
    save_final_model(final, run.final_model, config, val.input_dim, val.max_segments, {"candidate": single.to_json()})
    return result


def conclusion(candidates: list[Candidate]) -> str:
    """Whether crossover beat the best single checkpoint on validation, in words."""
    by_name = {c.name: c for c in candidates}
    single = next(c for c in candidates if c.name.startswith("best on validation"))
    lines = []
    for name in (CROSSOVER, REFINED, ENSEMBLE):
        if name not in by_name:
            continue
        delta = by_name[name].val["loss"] - single.val["loss"]
        verdict = "beats" if delta < 0 else "does not beat"
        lines.append(
            f"{name} {verdict} the {single.name} on validation (loss {by_name[name].val['loss']:.4f} "
            f"vs {single.val['loss']:.4f}, {delta:+.4f})."
        )
    return " ".join(lines)


def write_crossover(run: RunDir, result: CrossoverResult, scores: dict[int, float], inputs: str | None = None) -> None:
    entries = []
    for index, candidate in enumerate(result.candidates):
        entry = candidate.to_json()
        if candidate.fusion is not None:
            path = run.crossover_fusion(index)
            state = {k: v.detach().clone().contiguous() for k, v in candidate.fusion.state_dict().items()}
            write_with(path, partial(save_tensors, state))
            entry["fusion"] = str(path.relative_to(run.root))
        entries.append(entry)
    write_json(
        run.crossover_candidates,
        {
            "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "sweet_spots": result.sweet_spots,
            "refined": result.refined,
            "refine_log": result.refine_log,
            "checkpoint_scores": {str(e): s for e, s in scores.items()},
            "best": result.best,
            "final_model": result.final_model,
            "conclusion": result.conclusion,
            "candidates": entries,
            "inputs": inputs,  # freshness.crossover_inputs: what this selection was made from
        },
    )
    with atomic_open(run.crossover_summary) as handle:
        handle.write("# Parameter crossover (validation)\n\n" + format_crossover(result) + "\n")


def load_candidates(run: RunDir) -> tuple[list[Candidate], dict[str, Any]]:
    """The candidates of candidates.json with their fitted fusions (strict), and the file's other fields."""
    path = run.crossover_candidates
    if not path.exists():
        raise FileNotFoundError(f"{path}: no crossover results; {run_first(run, path)}")
    data = read_json(path)
    candidates = []
    for entry in data["candidates"]:
        fusion_file = entry.pop("fusion", None)
        candidate = Candidate(**entry)
        if fusion_file is not None:
            candidate.fusion = KalmanFusion(TARGET_DIMS)
            candidate.fusion.load_state_dict(load_file(str(run.root / fusion_file)), strict=True)
            candidate.fusion.eval()
        candidates.append(candidate)
    return candidates, data


def format_crossover(result: CrossoverResult) -> str:
    """Sweet spots, refined epochs and every candidate's validation numbers, as the CLI prints them."""
    lines = ["group              sweet spot  refined"]
    lines += [f"{g:<18} {result.sweet_spots[g]:>10}  {result.refined[g]:>7}" for g in GROUPS]
    width = max(len("candidate (validation)"), *(len(c.name) for c in result.candidates))
    columns = [(metric.key, metric.label, max(8, len(metric.label))) for metric in SUMMARY]
    lines += [
        "",
        f"{'candidate (validation)':<{width}}  {'loss':>8}  " + "  ".join(f"{label:>{w}}" for _, label, w in columns),
    ]
    for c in sorted(result.candidates, key=lambda c: c.val["loss"]):
        h = c.val["headline"]
        cells = "  ".join(f"{'—':>{w}}" if h[key] is None else f"{h[key]:>{w}.4f}" for key, _, w in columns)
        lines.append(f"{c.name:<{width}}  {c.val['loss']:>8.4f}  {cells}")
    lines += [
        "",
        f"best on validation: {result.best}; saved as the final model: {result.final_model}",
        result.conclusion,
    ]
    return "\n".join(lines)
