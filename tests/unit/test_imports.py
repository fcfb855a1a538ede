"""The house's import rules, read from the source (every import, lazy ones inside functions too).

docs/ARCHITECTURE.md promises: no cycles between modules; the rooms import only down this table:

    records      nothing of the rig (the ground floor: trajectory, run folder, answers, statistics)
    repl         nothing of the rig
    worker       records
    configs      the rooms' own settings types (SETTINGS) and what they need
    controller   records, repl, worker, configs
    interp       records, worker, configs
    experiments  everything

and the CLI's `_common` imports nothing back.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("records", "repl", "worker", "configs", "controller", "interp", "experiments")
MAY_IMPORT = {
    "records": {"records"},
    "repl": {"repl"},
    "worker": {"worker", "records"},
    "controller": {"controller", "records", "repl", "worker", "configs"},
    "interp": {"interp", "records", "worker", "configs"},
}
# The rooms' own settings types, which configs composes into a profile (and what they need: the model check).
SETTINGS = {"worker.settings", "worker.models", "controller.settings", "repl.types", "interp.config", "repl", "interp",
            "controller", "worker"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Rig modules a file imports, resolved to the deepest module that exists."""
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            if n.split(".")[0] in PACKAGES:
                out.add(_existing(n))
    out.discard(mod)
    return out


def _existing(name: str) -> str:
    parts = name.split(".")
    while parts:
        p = ROOT.joinpath(*parts)
        if p.with_suffix(".py").is_file() or (p / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return name


def graph() -> dict[str, set[str]]:
    g = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            g[module_name(path)] = imports_of(path)
    return g


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if state.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _without_package_inits(g: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's __init__ re-exporting its children is not a cycle with a child that imports a
    sibling through the package; edges *into* a package's own __init__ from inside it are dropped."""
    out = {}
    for mod, deps in g.items():
        out[mod] = {d for d in deps if not (d in g and mod.startswith(d + "."))}
    return out


def test_no_import_cycles() -> None:
    assert find_cycle(_without_package_inits(graph())) is None


def allowed(room: str, dep: str) -> bool:
    top = dep.split(".")[0]
    if room == "configs":
        return top == room or dep in SETTINGS
    if room in MAY_IMPORT:
        return top in MAY_IMPORT[room]
    return True  # experiments stands on everything


def test_rooms_import_only_downwards() -> None:
    bad = [f"{mod} -> {d}" for mod, deps in graph().items() for d in deps if not allowed(mod.split(".")[0], d)]
    assert bad == []


def test_cli_common_imports_nothing_of_the_cli() -> None:
    deps = graph()["experiments.cli._common"]
    assert not [d for d in deps if d.startswith("experiments.cli")]


def test_checks_catch_what_they_guard() -> None:
    assert not allowed("worker", "controller.loop") and not allowed("interp", "controller.loop")
    assert allowed("interp", "records.trajectory") and not allowed("interp", "experiments.runs")
    assert not allowed("records", "worker.models") and allowed("configs", "worker.settings")
    assert not allowed("configs", "worker.server")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
