"""The single-machine path of `redheart study`: every point in order, with a bar over them, then `collect`."""

from __future__ import annotations

from tqdm.auto import tqdm

from redheart.config import RunConfig
from redheart.core.rundir import RunDir
from redheart.study.points import finished_point, plan, point_of, run_point
from redheart.study.results import StudyResult, collect


def run_study(run: RunDir, config: RunConfig, progress: bool = True) -> StudyResult:
    """Train every unfinished or stale point (each size's learning-rate sweep first; a point resumes where it
    stopped, and prints its measured time per step before it starts), then collect the results."""
    points = plan(run, config)
    with tqdm(points, unit="point", disable=not progress, position=0) as bar:
        for point in bar:
            bar.set_description(f"study point {point.index} ({point.size}, {point.label})")
            run_point(run, config, point.index, progress=progress)
    return collect(run, config)


def run_check(run: RunDir, config: RunConfig, progress: bool = True) -> list[str]:
    """The convergence check: each `study.check` point (SIZE:DATA) trained again with twice the step cap."""
    wanted = set(config.study.check)
    chosen = [p for p in plan(run, config) if f"{p.size}:{p.label}" in wanted]
    unknown = wanted - {f"{p.size}:{p.label}" for p in chosen}
    if unknown:
        raise ValueError(f"study.check names points this study does not have: {sorted(unknown)}")
    folders = []
    for point in chosen:
        if finished_point(run, point) is None:
            run_point(run, config, point.index, progress=progress)
        run_point(run, config, point.index, progress=progress, cap_factor=2)
        folders.append(point_of(run, config, point.index).folder(run).name)
    return folders
