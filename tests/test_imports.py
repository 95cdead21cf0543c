"""The package's import graph, read from the source with `ast`: no module imports itself
through others (a circle works only in the order the modules happen to load, and breaks
when a test or a worker imports the other end first), and each package imports only the
packages below it (the layering the design gives).

Every import counts, those inside functions too: a lazy import still closes a circle, it
only moves the failure to the call. Imports under ``if TYPE_CHECKING:`` never run and do
not count. Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first, so those are
edges as well, except the importer's own parents (already running when it runs).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import mnasfpn

ROOT = Path(mnasfpn.__file__).parent


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module
    line: int
    local: bool  # inside a function: runs at the call, not at import


def _modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(
    node: ast.AST, local: bool = False
) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            body: list[ast.stmt] = child.orelse  # only the `else:` branch ever runs
        else:
            body = [child]
        for stmt in body:
            if isinstance(stmt, ast.Import | ast.ImportFrom):
                yield stmt, local
            inner = local or isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            yield from _import_nodes(stmt, inner)


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Import]:
    """The in-project modules that `name` (at `path`) imports, one `Import` per module."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own_parents = {*_parents(name), name}
    for node, local in _import_nodes(ast.parse(path.read_text(), str(path))):
        explicit: list[str] = []  # what the statement names
        loaded: list[str] = []  # what it runs on the way (parent packages)
        if isinstance(node, ast.Import):
            for alias in node.names:
                explicit.append(alias.name)
        else:
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in modules:
                    explicit.append(sub)
                    loaded.append(base)
                else:
                    explicit.append(base)  # a name defined in `base` itself
        for target in explicit:
            loaded.extend(_parents(target))
        seen = set()
        for target in explicit + [t for t in loaded if t not in own_parents]:
            if target in modules and target != name and target not in seen:
                seen.add(target)
                yield Import(name, target, node.lineno, local)


# Functions that import a library: called at a module's top, they import it there.
LOADERS = {"load_tensorflow": "tensorflow", "load_keras": "keras"}


def external_imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(top-level package, line, inside a function) of each import from outside mnasfpn,
    with a `LOADERS` call outside any function counted as the import it makes."""
    tree = ast.parse(path.read_text(), str(path))
    for node, local in _import_nodes(tree):
        if isinstance(node, ast.ImportFrom):
            names = [] if node.level else [node.module or ""]
        else:
            names = [alias.name for alias in node.names]
        for name in names:
            if name.split(".")[0] != "mnasfpn":
                yield name.split(".")[0], node.lineno, local
    for call in _top_level_calls(tree):
        name = getattr(call.func, "id", getattr(call.func, "attr", None))
        if name in LOADERS:
            yield LOADERS[name], call.lineno, False


def _top_level_calls(node: ast.AST) -> Iterator[ast.Call]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            # Its decorators and defaults run at import; its body does not.
            for part in [*getattr(child, "decorator_list", []), child.args]:
                yield from _top_level_calls(part)
            continue
        if isinstance(child, ast.Call):
            yield child
        yield from _top_level_calls(child)


@cache
def import_graph(root: Path = ROOT) -> dict[str, list[Import]]:
    modules = _modules(root)
    return {name: list(imports_of(name, path, modules)) for name, path in modules.items()}


def cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
    """One shortest circle through each strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_shortest_circle(graph, group) for group in groups]


def _shortest_circle(graph: dict[str, list[Import]], group: set[str]) -> list[Import]:
    start = min(group)
    paths: dict[str, list[Import]] = {start: []}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for edge in graph[node]:
                if edge.target == start:
                    return [*paths[node], edge]
                if edge.target in group and edge.target not in paths:
                    paths[edge.target] = [*paths[node], edge]
                    following.append(edge.target)
        frontier = following
    raise AssertionError(f"{sorted(group)} is not strongly connected")


def describe(circle: list[Import]) -> str:
    steps = [circle[0].source] + [
        f"({e.line}{', in a function' if e.local else ''}) → {e.target}" for e in circle
    ]
    return " ".join(steps)


def layer(module: str) -> str:
    """A module's layer: its subpackage (`lut`), a top-level module's own name (`archs`),
    `base` for the shared helpers, and `commands` for the click modules, which sit on top
    of everything (each package's `cli.py`, `arch_cli`, `cli_common`, `export_cli`)."""
    parts = module.split(".")
    if parts[-1] == "cli" or parts[-1].endswith("_cli") or parts[-1] == "cli_common":
        return "commands"
    if len(parts) == 1 or parts[1] in BASE:
        return "base"
    return parts[1]


# Shared helpers every layer may use; they import nothing of the project above them.
BASE = {"errors", "atomic", "registry", "sqlite_db", "parallel", "tfenv", "cache"}
# The layers each layer may import (besides itself and base): each only those below it.
# Devices stand apart (only the table uses them); data and train build on the model; the
# search builds on the spaces and the table and reaches training only inside the methods
# of its evaluators (`TRAINING_DOOR`), whose training runs in worker processes.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "searchspace": set(),
    "archs": {"searchspace"},
    "ir": {"searchspace"},
    "tflite": {"searchspace", "ir"},
    "model": {"searchspace", "ir", "tflite"},
    "profiler": {"searchspace", "ir", "tflite", "model"},
    "devices": set(),
    "lut": {"searchspace", "archs", "ir", "tflite", "model", "profiler", "devices"},
    "data": set(),
    "train": {"searchspace", "archs", "ir", "tflite", "model", "data"},
    "search": {"searchspace", "archs", "ir", "lut"},
}
ALLOWED["commands"] = set(ALLOWED) - {"commands"}  # every layer
TRAINING_DOOR = "mnasfpn.search.evaluators"

# Libraries that cost a start-up its "instant": none of them may load when the package's
# light modules are imported (`--help`, a table's predict, the search driver).
HEAVY = {
    "tensorflow", "keras", "tf_keras", "ai_edge_litert", "ray", "matplotlib", "adbutils",
    "adb_shell", "sklearn", "scipy", "pandas", "pycocotools", "faster_coco_eval",
}  # fmt: skip
# Modules whose job is one of those libraries; the others import them only inside a
# function (with the reason beside it) or not at all.
HEAVY_MODULES = {
    "mnasfpn.model.keras_builder",  # Keras
    "mnasfpn.model.layers",  # Keras
    "mnasfpn.tflite.reader",  # LiteRT's flatbuffer schema
    "mnasfpn.tflite.writer",  # LiteRT's flatbuffer schema
    "mnasfpn.train.boxes",  # Keras, through load_keras() at its top
    "mnasfpn.train.objective",  # train.boxes
    "mnasfpn.train.supernet",  # Keras
}


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    edges = {(e.source, e.target): e for edges in graph.values() for e in edges}
    # from-import of a submodule, a relative import, parent packages, a function's import.
    assert ("mnasfpn.cli", "mnasfpn.lut.cli") in edges
    assert ("mnasfpn.lut.cli", "mnasfpn.lut") not in edges  # its own package: not an edge
    assert any(t.startswith("mnasfpn.devices") for s, t in edges if s == "mnasfpn.lut.build")
    assert any(e.local for e in edges.values())
    # ... and the circle finder finds a circle.
    fake = {
        "a": [Import("a", "b", 1, False)],
        "b": [Import("b", "c", 2, True)],
        "c": [Import("c", "a", 3, False), Import("c", "d", 4, False)],
        "d": [],
    }
    (circle,) = cycles(fake)
    assert describe(circle) == "a (1) → b (2, in a function) → c (3) → a"


def test_no_import_circles() -> None:
    found = [describe(c) for c in cycles(import_graph())]
    assert not found, "import circles:\n" + "\n".join(found)


def test_each_layer_imports_only_those_below_it() -> None:
    graph = import_graph()
    assert {layer(m) for m in graph} <= set(ALLOWED), "a new layer needs a row in ALLOWED"
    wrong = []
    for edges in graph.values():
        for e in edges:
            source, target = layer(e.source), layer(e.target)
            if target in (source, "base") or target in ALLOWED[source]:
                continue
            if (source, target) == ("search", "train") and e.source == TRAINING_DOOR and e.local:
                continue  # inside the evaluator's methods: never with the search's modules
            wrong.append(f"{e.source}:{e.line} imports {e.target} ({source} → {target})")
    assert not wrong, "\n".join(wrong)


def _top_closure(graph: dict[str, list[Import]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(e.target for e in graph[module] if not e.local)
    return seen


def test_heavy_libraries_load_only_inside_functions_of_light_modules() -> None:
    """Importing `mnasfpn.cli` (every command's module) loads no heavy library and no
    module whose job is one: they come in inside the function that needs them."""
    graph = import_graph()
    modules = _modules()
    direct = {
        m for m, path in modules.items() if any(not local and name in HEAVY
                                                for name, _, local in external_imports(path))
    }  # fmt: skip
    heavy_at_top = {m for m in modules if _top_closure(graph, m) & direct}
    assert heavy_at_top == HEAVY_MODULES, "which modules load a heavy library changed"
    loaded = _top_closure(graph, "mnasfpn.cli")
    assert {e.target for e in graph["mnasfpn.cli"]} <= loaded  # every package's commands
    assert not loaded & HEAVY_MODULES, sorted(loaded & HEAVY_MODULES)
