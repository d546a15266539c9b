"""Every artefact of a run folder is named in one place: RunDir, ModelDir and ResumeDir (redheart/core/rundir.py).

The names are read from core/rundir.py itself: every component of every Path its layout classes give (properties, and
methods called with stand-in arguments, on a root that need not exist) and its functions give, plus the file-name
constants of redheart/core/. A name built from an argument ("epoch_{}.json", "{}.safetensors") is a template, the
stand-in replaced by "{}". Then every string literal of the package outside core/ is read with `ast`:

- a file name (it has a suffix) may not be written out anywhere, alone or as the end of a path ("sweep/choice.json");
- a folder name ("crossover", "data") is also a JSON key, a config section, a command or a pin's owner, so it counts
  only where it builds a path: as an operand of `/`, or ending a literal path ("runs/x/crossover");
- an f-string may not build a templated name: its last path component is a template (f"epoch_{n:03d}"), or it ends
  with a formatted value followed by a template's constant tail (f"{group}.safetensors", f"{label}.json").
"""

from __future__ import annotations

import ast
import inspect
import typing
from pathlib import Path

import pytest

from redheart.core import rundir

PACKAGE = Path(__file__).resolve().parents[1] / "redheart"
CORE = PACKAGE / "core"
# Stand-ins for the arguments of a method or function that names a file; a name containing one is a template.
STAND_INS: dict[object, object] = {str: "STANDIN", int: 987654}
ROOT = Path("run")  # the layouts only join paths: nothing is created


def _call(function: typing.Callable[..., object], bound: bool) -> object:
    hints = typing.get_type_hints(function)
    parameters = list(inspect.signature(function).parameters)[1 if bound else 0 :]
    return function(*(ROOT if hints[name] is Path else STAND_INS[hints[name]] for name in parameters))


def _paths(found: object) -> list[Path]:
    """The paths in what a layout member gave: a Path, a tuple of them, or another layout (all of its paths)."""
    if isinstance(found, Path):
        return [found]
    if isinstance(found, tuple):
        return [path for item in found for path in _paths(item)]
    if type(found).__module__ == rundir.__name__:
        return _layout_paths(found)
    return []


def _layout_paths(layout: object) -> list[Path]:
    paths = []
    for attribute, value in vars(type(layout)).items():
        if isinstance(value, property):
            paths += _paths(getattr(layout, attribute))
        elif inspect.isfunction(value) and not attribute.startswith("_"):
            paths += _paths(_call(getattr(layout, attribute), bound=False))
    return paths


def rundir_paths() -> list[Path]:
    """Every path core/rundir.py gives: of each layout class on ROOT, and of each function."""
    paths = []
    for _, member in inspect.getmembers(rundir):
        if getattr(member, "__module__", None) != rundir.__name__:
            continue
        if inspect.isclass(member):
            paths += _layout_paths(member(ROOT))
        elif inspect.isfunction(member):
            paths += _paths(_call(member, bound=False))
    return paths


def _template(name: str) -> str:
    for stand_in in STAND_INS.values():
        name = name.replace(str(stand_in), "{}")
    return name


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


def artefact_names() -> tuple[set[str], set[str]]:
    """(names, templates): the file and folder names core/ spells, and those built from an argument, as templates (a
    folder that is the argument itself, "{}", names nothing)."""
    spelled = {_template(part) for path in rundir_paths() for part in path.relative_to(ROOT).parts}
    templates = {name for name in spelled if "{}" in name} - {"{}"}
    return {name for name in spelled if "{}" not in name} | _core_file_names(), templates


def _f_string_pattern(node: ast.JoinedStr) -> str:
    return "".join(part.value if isinstance(part, ast.Constant) else "{}" for part in node.values)


def spelled_names(path: Path, names: set[str], templates: set[str] | None = None) -> list[tuple[int, str]]:
    """(line, literal) of every literal in `path` that spells one of `names` as a path does, or builds one of
    `templates` (an f-string, given as its pattern)."""
    files = {n for n in names if Path(n).suffix}
    folders = names - files
    templates = templates or set()
    tails = {template.rsplit("{}", 1)[1] for template in templates} - {""}
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_path = {
        id(side)
        for node in ast.walk(tree)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)
        for side in (node.left, node.right)
    }
    in_f_string = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for part in node.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            pattern = _f_string_pattern(node)
            last, before = node.values[-1], node.values[-2:-1]
            ends_in_tail = (
                isinstance(last, ast.Constant)
                and last.value in tails
                and bool(before)
                and isinstance(before[0], ast.FormattedValue)
            )
            if pattern.rsplit("/", 1)[-1] in templates or ends_in_tail:
                found.append((node.lineno, pattern))
            continue
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in in_f_string:
            continue
        text = node.value
        last_name = text.rsplit("/", 1)[-1]
        if text in files or ("/" in text and last_name in names) or (text in folders and id(node) in in_path):
            found.append((node.lineno, text))
    return found


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if CORE not in p.parents)


NAMES, TEMPLATES = artefact_names()


def test_the_names_come_from_rundir() -> None:
    # A few that every phase relies on, spelled here as the expectation (tests are outside the package).
    assert {"test_results.json", "candidates.json", "calibrators.json", "checkpoints", "manifest.json"} <= NAMES
    assert {"current.json", "slot_0", "training.pt", "module_stats.json", "fusion"} <= NAMES  # ResumeDir, methods
    assert {"{}.safetensors", "epoch_{}", "epoch_{}.json", "study_{}.png"} <= TEMPLATES


def test_an_f_string_building_a_templated_name_is_found(tmp_path: Path) -> None:
    source = tmp_path / "example.py"
    source.write_text(
        'weights = f"{group}.safetensors"\n'
        'folder = f"runs/{name}/epoch_{epoch:03d}"\n'
        'fine = f"{group} weights"\n'
        'also_fine = f"{count} files, the newest .safetensors"\n'
    )
    assert spelled_names(source, NAMES, TEMPLATES) == [(1, "{}.safetensors"), (2, "runs/{}/epoch_{}")]


@pytest.mark.parametrize("path", package_files(), ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_no_artefact_name_outside_core(path: Path) -> None:
    found = spelled_names(path, NAMES, TEMPLATES)
    where = "; ".join(f"{path.relative_to(PACKAGE)}:{line}: {text!r}" for line, text in found)
    assert not found, f"artefact names spelled outside core/rundir.py (use RunDir/ModelDir/ResumeDir): {where}"


if __name__ == "__main__":  # python tests/test_artefact_names.py [PACKAGE]: every such literal in PACKAGE, and a count
    import sys

    package = Path(sys.argv[1]) if len(sys.argv) > 1 else PACKAGE
    hits = [
        f"{path.relative_to(package)}:{line}: {text!r}"
        for path in sorted(p for p in package.rglob("*.py") if package / "core" not in p.parents)
        for line, text in spelled_names(path, NAMES, TEMPLATES)
    ]
    print("\n".join([*hits, f"{len(hits)} artefact-name literals outside core/"]))
