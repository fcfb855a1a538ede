"""The house's import rules, read from the source (every import, lazy ones inside functions too).

docs/ARCHITECTURE.md promises:

- one namespace: every import of a room is spelled `rlm_rig.<room>...` (the folders are mapped there by
  pyproject's package-dir, and pyproject lists every package folder);
- no cycles between modules;
- the rooms import only down this table (MAY_IMPORT; `experiments` stands on everything):

      records      nothing of the rig (trajectory, run folder, answers, shared statistics)
      repl         nothing of the rig
      worker       records
      configs      the rooms' own settings types (SETTINGS) and what they need
      controller   records, repl, worker, configs
      interp       records, worker, configs

- doors without faces: a package's `__init__.py` re-exports nothing (no `__all__`, no lazy `_EXPORTS`,
  no `__getattr__`), and every `from rlm_rig.X import Y` names the module that defines Y, so each public
  name has one import path;
- the CLI's `_common` imports nothing back.
"""
from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NS = "rlm_rig"
PACKAGES = ("records", "repl", "worker", "configs", "controller", "interp", "experiments")
MAY_IMPORT = {
    "records": {"records"},
    "repl": {"repl"},
    "worker": {"worker", "records"},
    "controller": {"controller", "records", "repl", "worker", "configs"},
    "interp": {"interp", "records", "worker", "configs"},
}
# The rooms' own settings types, which configs composes into a profile (and what they need: the model check).
SETTINGS = {"rlm_rig.worker.settings", "rlm_rig.worker.models", "rlm_rig.controller.settings", "rlm_rig.repl.types", "rlm_rig.interp.config"}


def module_name(path: Path) -> str:
    """The installed name: `rlm_rig.controller.rig` for controller/rig.py."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([NS, *parts])


def rig_files() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py")) if "_kernel" not in p.parts]


def raw_imports(path: Path) -> list[tuple[int, str, str | None, bool]]:
    """(line, module as written after resolving dots, imported name or None, relative?) of every import."""
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, None, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(node.lineno, base, a.name, bool(node.level)) for a in node.names]
    return out


def _existing(name: str) -> str:
    parts = name.split(".")[1:]
    while parts:
        p = ROOT.joinpath(*parts)
        if p.with_suffix(".py").is_file() or (p / "__init__.py").is_file():
            return ".".join([NS, *parts])
        parts.pop()
    return name


def imports_of(path: Path) -> set[str]:
    """Rig modules a file imports, resolved to the deepest module that exists."""
    out: set[str] = set()
    for _, base, name, _ in raw_imports(path):
        if base.startswith(NS + "."):
            out.add(_existing(f"{base}.{name}" if name else base))
    out.discard(module_name(path))
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in rig_files()}


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


def test_no_import_cycles() -> None:
    assert find_cycle(graph()) is None


def room_of(mod: str) -> str:
    return mod.split(".")[1]


def allowed(room: str, dep: str) -> bool:
    top = room_of(dep)
    if room == "configs":
        return top == room or dep in SETTINGS
    if room in MAY_IMPORT:
        return top in MAY_IMPORT[room]
    return True  # experiments stands on everything


def test_rooms_import_only_downwards() -> None:
    bad = [f"{mod} -> {d}" for mod, deps in graph().items() for d in deps if not allowed(room_of(mod), d)]
    assert bad == []


def bare_room_imports(path: Path) -> list[str]:
    """Imports that name a room without the namespace (they would load a second copy of the module)."""
    return [f"{path.relative_to(ROOT)}:{line}: {base}" for line, base, _, rel in raw_imports(path)
            if not rel and base.split(".")[0] in PACKAGES]


def test_every_import_goes_through_the_namespace() -> None:
    files = rig_files() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    assert [hit for p in files for hit in bare_room_imports(p)] == []


def face_machinery(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        out += [f"{path.relative_to(ROOT)}: {t.id}" for t in targets if isinstance(t, ast.Name)
                and t.id in ("__all__", "_EXPORTS")]
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            out.append(f"{path.relative_to(ROOT)}: __getattr__")
    return out


def defined_in(init: Path) -> set[str]:
    """Names a package's __init__ defines itself (code that lives there, such as the CLI's `app`)."""
    out = set()
    for node in ast.parse(init.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            out |= {t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(t, ast.Name)}
    return out


def names_through_a_package(path: Path) -> list[str]:
    """`from rlm_rig.pkg import Name` where pkg is a package, Name is not its submodule and the package
    does not define Name itself: an import through a face."""
    out = []
    for line, base, name, _ in raw_imports(path):
        if not name or not base.startswith(NS + "."):
            continue
        folder = ROOT.joinpath(*base.split(".")[1:])  # the folder of rlm_rig.<room>...
        init = folder / "__init__.py"
        if init.is_file() and not ((folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()
                                   or name in defined_in(init)):
            out.append(f"{path.relative_to(ROOT)}:{line}: from {base} import {name}")
    return out


def test_packages_have_no_faces() -> None:
    inits = [p for p in rig_files() if p.name == "__init__.py"]
    assert [hit for p in inits for hit in face_machinery(p)] == []


def test_every_name_is_imported_from_its_defining_module() -> None:
    files = rig_files() + sorted((ROOT / "tests").rglob("*.py")) + sorted((ROOT / "bench").rglob("*.py"))
    assert [hit for p in files for hit in names_through_a_package(p)] == []


def test_pyproject_maps_every_package_folder() -> None:
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {NS} | {module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("__init__.py")}
    assert listed == found
    assert {k: v for k, v in tool["package-dir"].items() if k != NS} == {f"{NS}.{p}": p for p in PACKAGES}


def test_cli_common_imports_nothing_of_the_cli() -> None:
    deps = graph()["rlm_rig.experiments.cli._common"]
    assert not [d for d in deps if d.startswith("rlm_rig.experiments.cli")]


def test_checks_catch_what_they_guard(tmp_path) -> None:
    assert not allowed("worker", "rlm_rig.controller.loop") and not allowed("interp", "rlm_rig.controller.loop")
    assert allowed("interp", "rlm_rig.records.trajectory") and not allowed("interp", "rlm_rig.experiments.runs")
    assert not allowed("records", "rlm_rig.worker.models") and allowed("configs", "rlm_rig.worker.settings")
    assert not allowed("configs", "rlm_rig.worker.server")
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    probe = ROOT / "tests" / "unit" / "_probe_imports.py"
    probe.write_text("from controller.rig import Rig\nfrom rlm_rig.interp import load_interp_config\n"
                     "from rlm_rig.interp import jobs\n__all__ = ['x']\n")
    try:
        assert len(bare_room_imports(probe)) == 1
        assert [re.sub(r".*: ", "", h) for h in names_through_a_package(probe)] == [
            "from rlm_rig.interp import load_interp_config"]
        assert face_machinery(probe) == ["tests/unit/_probe_imports.py: __all__"]
    finally:
        probe.unlink()
