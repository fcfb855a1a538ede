"""Repository hygiene: what works only on the machine that built the repo must never be tracked.

CI runs on the build machine, so a link to its virtualenv or an absolute interpreter path in a doc
resolves there and nowhere else; only a check on the tracked tree itself can see it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# An absolute path to a Python interpreter or a venv: `/x/y/bin/python3.11`, `/x/venv0/bin/rlm-rig`, `/x/.venv`.
# Not matched: `.venv/bin/python`, `$VENV/bin/python`, `#!/usr/bin/env python3` (no `/bin/python`).
_ABS_PY = re.compile(r"(?<![\w.$/~-])(/(?:[\w.+-]+/)+bin/python[\d.]*)(?![\w/])")
_ABS_VENV = re.compile(r"(?<![\w.$/~-])(/(?:[\w.+-]+/)*\.?venv[\w.-]*)(?=[/\s'\"`)]|$)")


def _tracked() -> list[tuple[str, str]]:
    """(mode, path) of every tracked file, from the index: the tree a fresh clone gets."""
    out = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    rows = []
    for entry in out.decode().split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            rows.append((meta.split()[0], path))
    return rows


def bad_links(root: Path, entries: list[tuple[str, str]]) -> list[str]:
    """Tracked symlinks whose target is absolute or leaves the repository."""
    bad = []
    for mode, path in entries:
        if mode != "120000":
            continue
        target = subprocess.run(["git", "cat-file", "-p", f":{path}"], cwd=root, capture_output=True,
                                check=True).stdout.decode()
        resolved = (root / path).parent.joinpath(target)
        if target.startswith("/") or not _inside(resolved, root):
            bad.append(f"{path} -> {target}")
    return bad


def _inside(path: Path, root: Path) -> bool:
    norm = Path(*[p for p in _normalize(path.parts)])
    try:
        norm.relative_to(root)
        return True
    except ValueError:
        return False


def _normalize(parts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p == "..":
            if len(out) > 1:
                out.pop()
        elif p != ".":
            out.append(p)
    return out


def machine_paths(text: str) -> list[str]:
    """Absolute interpreter or venv paths in a text (what only the build machine has)."""
    pythons = [m.group(1) for m in _ABS_PY.finditer(text)]
    venvs = [m.group(1) for m in _ABS_VENV.finditer(text)]
    return pythons + [v for v in venvs if not any(p.startswith(v + "/") for p in pythons)]


SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()  # the one file that must spell such paths out


def _text_files(entries: list[tuple[str, str]]) -> list[str]:
    return [p for mode, p in entries
            if mode != "120000" and p != SELF and not p.endswith((".gz", ".png", ".parquet"))]


def setup_commands(readme: str) -> list[str]:
    """The commands of the README's fresh-machine set-up block (first code block under that heading)."""
    m = re.search(r"^##[^\n]*[Ss]et-?up[^\n]*\n(.*?)```(?:bash|sh)?\n(.*?)```", readme, re.S | re.M)
    assert m, "the README has no set-up section with a code block"
    cmds = []
    for line in m.group(2).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            cmds.append(line)
    return cmds


def missing_commands(cmds: list[str], root: Path) -> list[str]:
    """Set-up commands that name a make target or a script that does not exist."""
    makefile = (root / "Makefile").read_text() if (root / "Makefile").exists() else ""
    targets = set(re.findall(r"^([\w.-]+)\s*:(?!=)", makefile, re.M))
    missing = []
    for cmd in cmds:
        words = cmd.split()
        if words[0] == "make":
            missing += [f"make target {w!r}" for w in words[1:] if not w.startswith("-") and "=" not in w
                        and w not in targets]
        elif words[0] in ("bash", "sh"):
            if not (root / words[1]).is_file():
                missing.append(f"script {words[1]!r}")
        elif words[0].startswith(("./", "scripts/")):
            if not (root / words[0]).is_file():
                missing.append(f"script {words[0]!r}")
        else:
            missing.append(f"{cmd!r} is neither a make target nor a script of the repository")
    return missing


def test_no_tracked_link_leaves_the_repository() -> None:
    assert bad_links(ROOT, _tracked()) == []


def test_no_machine_paths_in_tracked_files() -> None:
    hits = []
    for path in _text_files(_tracked()):
        try:
            text = (ROOT / path).read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        hits += [f"{path}: {p}" for p in machine_paths(text)]
    assert hits == []


def test_readme_setup_commands_exist() -> None:
    cmds = setup_commands((ROOT / "README.md").read_text())
    assert len(cmds) == 2, f"the README's set-up block should hold exactly two commands, has {cmds}"
    assert missing_commands(cmds, ROOT) == []


# The checks themselves, on trees built to fail: a hygiene test that cannot fail guards nothing.
# The bad paths are assembled at run time (R is the root slash), so no scanner of this repository,
# ours or another, finds a machine path written in this file.
R = "/"


@pytest.mark.parametrize("text, bad", [
    (f"run `{R}work/venv0/bin/python -m x`", [f"{R}work/venv0/bin/python"]),
    (f"{R}home/me/proj/.venv/bin/python3.11 bench.py", [f"{R}home/me/proj/.venv/bin/python3.11"]),
    (f"{R}opt/venv/bin/rlm-rig demo", [f"{R}opt/venv"]),
    (f"#!{R}usr/bin/python3\n", [f"{R}usr/bin/python3"]),
    (".venv/bin/python -m pytest", []),
    ("$VENV/bin/python x.py", []),
    ("#!/usr/bin/env python3\n", []),
    ("see docs/venv.md and ./.venv/bin/python", []),
])
def test_machine_path_detector(text: str, bad: list[str]) -> None:
    assert sorted(machine_paths(text)) == sorted(bad)


def test_link_detector(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("x")
    (tmp_path / ".venv").symlink_to(f"{R}work/venv0")
    (tmp_path / "up").symlink_to("../elsewhere")
    (tmp_path / "ok").symlink_to("docs/a.md")
    (tmp_path / "docs" / "ok2").symlink_to("../docs/a.md")
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True)
    out = subprocess.run(["git", "ls-files", "-s"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    entries = [(line.split()[0], line.split("\t", 1)[1]) for line in out.splitlines()]
    assert sorted(bad_links(tmp_path, entries)) == [f".venv -> {R}work/venv0", "up -> ../elsewhere"]


def test_setup_command_detector(tmp_path: Path) -> None:
    (tmp_path / "Makefile").write_text("demo: install\n\techo\nVAR := 1\ninstall:\n\ttrue\n")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "go.sh").write_text("")
    readme = "# x\n## Set-up on a fresh machine\ntext\n```bash\nmake demo   # main\nmake test\nbash scripts/go.sh\n" \
             "bash scripts/gone.sh\npip install x\n```\n"
    cmds = setup_commands(readme)
    assert cmds == ["make demo", "make test", "bash scripts/go.sh", "bash scripts/gone.sh", "pip install x"]
    assert missing_commands(cmds, tmp_path) == ["make target 'test'", "script 'scripts/gone.sh'",
                                                "'pip install x' is neither a make target nor a script of the repository"]


def ignored_sources(root: Path) -> list[str]:
    """Python files of the rig that .gitignore hides: they exist here and are missing from every clone."""
    out = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "--", "*.py"],
                         cwd=root, capture_output=True, text=True, check=True).stdout.split()
    packages = ("repl/", "worker/", "configs/", "controller/", "interp/", "experiments/", "tests/", "bench/")
    return [p for p in out if p.startswith(packages)]


def test_no_rig_source_is_ignored() -> None:
    assert ignored_sources(ROOT) == []


def test_ignored_source_detector(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "experiments" / "runs").mkdir(parents=True)
    (tmp_path / "experiments" / "runs" / "evaluate.py").write_text("")
    assert ignored_sources(tmp_path) == ["experiments/runs/evaluate.py"]


def test_tests_find_the_repository_root() -> None:
    """Test files sit one folder below tests/: `Path(__file__).parent.parent` is tests/, not the repo."""
    bad = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        text = path.read_text()
        if re.search(r"Path\(__file__\)\.resolve\(\)\.(parent\.parent|parents\[1\])(?![\w.\[])", text):
            bad.append(str(path.relative_to(ROOT)))
    assert bad == []
