"""The package's layering, read from the source (ast): no import cycles, no segbench import
hidden inside a function, and no module importing a layer above its own.

Layers, lowest first (a module may import its own layer and those below):

1. foundation: errors, provenance, numerics, rundir, cache, config, metrics, losses, tables,
   options (how the commands parse their options)
2. data: the data modules and their files and transforms
3. models and what draws or evaluates their outputs: models, inference, visualize
4. training: task, loggers, callbacks, trial (a tuning trial's pruning)
5. parsing a run: cli.lightning (LightningCLI, ``build``), cli.commands (the command table)
6. what uses runs and models: analysis (measurement tools), deploy (export), study (ablations,
   sweeps, verdicts), benchmark; side by side, and only deploy may use analysis's model
   loading (:mod:`segbench.analysis.loading`)
7. the command front end: the ``segbench.cli`` package itself
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "segbench"

LAYERS: list[tuple[str, ...]] = [
    (
        "errors",
        "provenance",
        "numerics",
        "rundir",
        "cache",
        "config",
        "metrics",
        "losses",
        "tables",
        "options",
    ),
    ("data",),
    ("models", "inference", "visualize"),
    ("task", "loggers", "callbacks", "trial"),
    ("cli.lightning", "cli.commands"),
    ("analysis", "deploy", "study", "benchmark"),
    ("cli", "cli.__main__"),
]
#: Within layer 6: (importer, imported) pairs that are allowed across its packages.
ACROSS = {("deploy", "analysis")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """``name -> file`` of every module, names relative to ``segbench`` ("" for the package)."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> tuple[set[str], list[str]]:
    """The segbench modules ``path`` imports (relative names), and the lines where a segbench
    import sits inside a function."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    hidden: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            names: list[str] = []
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                if child.module == "segbench" or child.module.startswith("segbench."):
                    base = child.module.removeprefix("segbench").removeprefix(".")
                    for alias in child.names:
                        sub = f"{base}.{alias.name}".lstrip(".")
                        names.append(sub if sub in known else base)
            elif isinstance(child, ast.Import):
                names = [
                    a.name.removeprefix("segbench").removeprefix(".")
                    for a in child.names
                    if a.name == "segbench" or a.name.startswith("segbench.")
                ]
            if names and in_function:
                hidden.append(f"{path.relative_to(REPO)}:{child.lineno}")
            found.update(names)
            visit(child, inner)

    visit(tree, False)
    return found, hidden


def layer_of(name: str) -> tuple[int, str]:
    """``(layer index, the layer entry it matched)`` of a module (the longest entry wins)."""
    best = (-1, "")
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if (name == entry or name.startswith(entry + ".")) and len(entry) > len(best[1]):
                best = (i, entry)
    return best


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods))[0] - {name, ""} for name, path in mods.items()}


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m and layer_of(m)[0] < 0]
    assert not unplaced, f"add these modules to a layer in tests/test_imports.py: {unplaced}"


def test_no_segbench_import_hides_inside_a_function():
    mods = modules()
    hidden = [line for path in mods.values() for line in imports(path, set(mods))[1]]
    assert not hidden, f"segbench imports inside functions (move them to the top): {hidden}"


def test_no_module_imports_a_layer_above_its_own():
    wrong = []
    for name, deps in graph().items():
        if not name:
            continue
        mine, top = layer_of(name)[0], name.split(".")[0]
        for dep in deps:
            theirs, other = layer_of(dep)[0], dep.split(".")[0]
            if theirs > mine:
                wrong.append(f"{name} (layer {mine + 1}) imports {dep} (layer {theirs + 1})")
            elif theirs == mine == 5 and top != other and (top, other) not in ACROSS:
                wrong.append(f"{name} imports {dep}: side by side, not allowed")
    assert not wrong, "\n".join(wrong)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    edges = graph()
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, 0 cycles")


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
