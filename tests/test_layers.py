"""The package's imports run one way: each layer imports only itself and the layers below it, without cycles.

Layers, bottom to top: core (atomic files, the run folder, checkpoint files) with config and the architecture
(the declared targets and modules); data; scoring (metrics, bootstrap, baselines); model; train; select;
evaluate; study (learning curves); report; and the entry points (cli, pipeline, infer). The imports are read
with `ast` from the source, so a lazy import inside a function counts like one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "redheart"
LAYERS = (
    ("redheart.core", "redheart.config", "redheart.architecture"),
    ("redheart.data",),
    ("redheart.scoring",),
    ("redheart.model",),
    ("redheart.train",),
    ("redheart.select",),
    ("redheart.evaluate",),
    ("redheart.study",),
    ("redheart.report",),
    ("redheart.cli", "redheart.pipeline", "redheart.infer", "redheart.__main__", "redheart"),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every redheart module `path` imports, at its top or inside a function; `from p import name` counts as
    p.name when that is a module, else as p."""
    found = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in MODULES else base)
    return {name for name in found if name == "redheart" or name.startswith("redheart.")}


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names `module` or a package holding it."""
    best, index = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, index = len(name), i
    assert index is not None, f"{module} is in no layer of LAYERS; add it to one"
    return index


def unit_of(module: str) -> str:
    """The node of the cycle check: a sub-package below a layer's package counts as one unit (its modules may
    import each other), a module directly in a layer's package counts alone."""
    parts = module.split(".")
    return ".".join(parts[:3]) if len(parts) > 3 or (len(parts) == 3 and is_package(module)) else module


def is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def import_graph() -> dict[str, set[str]]:
    return {module: {name for name in imported_modules(path) if name in MODULES} for module, path in MODULES.items()}


def test_every_module_is_in_a_layer_and_the_graph_is_not_empty():
    graph = import_graph()
    assert {"redheart.core.atomic", "redheart.train.trainer", "redheart.report.build"} <= set(graph)
    assert "redheart.core.atomic" in graph["redheart.config"]
    for module in graph:
        layer_of(module)


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {name} (layer {layer_of(name)})"
        for module, names in import_graph().items()
        for name in sorted(names)
        if layer_of(name) > layer_of(module)
    ]
    assert upward == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `edges` as a path that starts and ends on the same node, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_reports_a_cycle_and_accepts_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules_or_sub_packages():
    edges: dict[str, set[str]] = {}
    for module, names in import_graph().items():
        source = unit_of(module)
        edges.setdefault(source, set()).update(unit_of(name) for name in names if unit_of(name) != source)
    assert find_cycle(edges) is None


def test_layers_order_the_packages_bottom_to_top():
    order = [
        "redheart.core.rundir",
        "redheart.data.dataset",
        "redheart.scoring.metrics",
        "redheart.model.model",
        "redheart.train.swap.trainer",
        "redheart.select.crossover",
        "redheart.evaluate.final",
        "redheart.study.run",
        "redheart.report.build",
        "redheart.cli",
    ]
    assert [layer_of(name) for name in order] == list(range(len(LAYERS)))
    assert layer_of("redheart.config") == layer_of("redheart.core.atomic")


def test_sub_package_inits_hold_only_their_docstring():
    # An import names the module that defines the name; an __init__ that gathered names would be a second path.
    gathering = {
        module
        for module, path in MODULES.items()
        if path.name == "__init__.py" and module != "redheart"
        for node in ast.parse(path.read_text(encoding="utf-8")).body
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
    }
    assert gathering == set()
