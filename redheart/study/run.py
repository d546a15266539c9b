"""The single-machine path of `redheart study`: every point in order, with a bar over them, then `collect`."""

from __future__ import annotations

from tqdm.auto import tqdm

from redheart.config import RunConfig
from redheart.core.rundir import RunDir
from redheart.study.points import finished_point, plan, run_point
from redheart.study.results import StudyResult, collect


def run_study(run: RunDir, config: RunConfig, progress: bool = True) -> StudyResult:
    """Train every unfinished point (each resumes where it stopped), then collect the results."""
    points = plan(run, config)
    with tqdm(points, unit="point", disable=not progress, position=0) as bar:
        for point in bar:
            bar.set_description(f"study point {point.index} ({point.size}, {point.label})")
            if finished_point(run, point) is None:
                run_point(run, config, point.index, progress=progress)
    return collect(run, config)
