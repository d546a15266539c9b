"""Every artefact of a run folder is named in one place: RunDir and ModelDir (redheart/core/rundir.py).

The names are read from those classes themselves (every Path property, on a root that need not exist), and from
the file-name constants of redheart/core/; then every string literal of the package outside core/ is read with
`ast`. A file name (it has a suffix) may not be written out anywhere else, alone or as the end of a path
("sweep/choice.json"). A folder name ("crossover", "data") is also a JSON key, a config section, a command or a
pin's owner, so it counts only where it builds a path: as an operand of `/`, or ending a literal path
("runs/x/crossover").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from redheart.core.rundir import ModelDir, RunDir

PACKAGE = Path(__file__).resolve().parents[1] / "redheart"
CORE = PACKAGE / "core"


def _path_names(layout: object) -> set[str]:
    names = set()
    for attribute, value in vars(type(layout)).items():
        if isinstance(value, property):
            found = getattr(layout, attribute)
            if isinstance(found, Path):
                names.add(found.name)
            elif isinstance(found, ModelDir):
                names |= _path_names(found)
    return names


def _core_file_names() -> set[str]:
    """Module-level string constants of core/ that name a file (MANIFEST = "manifest.json")."""
    names = set()
    for path in CORE.glob("*.py"):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                if isinstance(value, str) and Path(value).suffix and "/" not in value and " " not in value:
                    names.add(value)
    return names


def artefact_names(root: Path) -> set[str]:
    return _path_names(RunDir(root)) | _path_names(ModelDir(root / "model")) | _core_file_names()


def spelled_names(path: Path, names: set[str]) -> list[tuple[int, str]]:
    """(line, literal) of every literal in `path` that spells one of `names` as a path does."""
    files = {n for n in names if Path(n).suffix}
    folders = names - files
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_path = {
        id(side)
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        for side in (node.left, node.right)
    }
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        text = node.value
        last = text.rsplit("/", 1)[-1]
        if text in files or ("/" in text and last in names) or (text in folders and id(node) in in_path):
            found.append((node.lineno, text))
    return found


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if CORE not in p.parents)


def _cases() -> list[object]:
    return [pytest.param(path, id=path.relative_to(PACKAGE).as_posix()) for path in package_files()]


NAMES = artefact_names(Path("run"))  # RunDir and ModelDir only join paths: nothing is created


def test_the_names_come_from_rundir() -> None:
    names = NAMES
    # A few that every phase relies on, spelled here as the expectation (tests are outside the package).
    assert {"test_results.json", "candidates.json", "calibrators.json", "checkpoints", "manifest.json"} <= names


@pytest.mark.parametrize("path", _cases())
def test_no_artefact_name_outside_core(path: Path) -> None:
    found = spelled_names(path, NAMES)
    where = "; ".join(f"{path.relative_to(PACKAGE)}:{line}: {text!r}" for line, text in found)
    assert not found, f"artefact names spelled outside core/rundir.py (use RunDir/ModelDir): {where}"


if __name__ == "__main__":  # python tests/test_artefact_names.py [PACKAGE]: every such literal in PACKAGE, and a count
    import sys

    package = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    hits = [
        f"{path.relative_to(package)}:{line}: {text!r}"
        for path in sorted(p for p in package.rglob("*.py") if package / "core" not in p.parents)
        for line, text in spelled_names(path, NAMES)
    ]
    print("\n".join([*hits, f"{len(hits)} artefact-name literals outside core/"]))
