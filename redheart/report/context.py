"""What every report section is built from: the run, the report folder, the images copied into it, and whether
the test results on disk still describe the run's artefacts."""

from __future__ import annotations

import shutil
from functools import cached_property
from pathlib import Path

from redheart.core.atomic import read_json, write_with
from redheart.core.rundir import RunDir
from redheart.report.document import Section


class Context:
    """The run, the report folder and the images copied into it."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.out = run.report
        run.report_images.mkdir(parents=True, exist_ok=True)

    def rel(self, path: Path) -> str:
        return str(Path(path).relative_to(self.run.root))

    def image(self, section: Section, path: Path, target: Path, caption: str) -> None:
        """Copy the plot `path` to `target` in the report's images and show it in `section`."""
        if not path.exists():
            section.missing.append(f"{self.rel(path)} not found")
            return
        write_with(target, lambda tmp: shutil.copyfile(path, tmp))
        section.images.append((self.report_rel(target), caption))

    def report_rel(self, path: Path) -> str:
        """`path` as the report's pages link it: relative to the report folder."""
        return str(Path(path).relative_to(self.out))

    @cached_property
    def stale_test_results(self) -> str | None:
        """Why the run's test results no longer describe its artefacts, or None when they do. Computed once per
        report: the fingerprint hashes the final model, the embeddings and the records."""
        from redheart.evaluate.test_reads import StaleTestResults, check_fingerprint, fingerprint

        try:
            check_fingerprint(self.run, read_json(self.run.test_results), fingerprint(self.run))
        except (StaleTestResults, FileNotFoundError) as error:
            return str(error)
        return None
