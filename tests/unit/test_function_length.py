"""No function of the rig is longer than about 60 lines unless a `# long: <reason>` comment stands
right above it (above its decorators): long code must say why it is long, or be split."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("repl", "worker", "configs", "controller", "interp", "experiments")
MAX_LINES = 60


def long_functions_without_reason(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    out = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            lines = path.read_text().splitlines()
            for node in ast.walk(ast.parse("\n".join(lines), str(path))):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                if node.end_lineno - node.lineno + 1 <= MAX_LINES:
                    continue
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                above = lines[first - 2].strip() if first >= 2 else ""
                if not above.startswith("# long:"):
                    out.append(f"{path.relative_to(root)}:{node.lineno} {node.name} "
                               f"({node.end_lineno - node.lineno + 1} lines)")
    return out


def test_long_functions_say_why() -> None:
    assert long_functions_without_reason(ROOT) == []


def test_the_check_sees_a_long_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(70))
    (pkg / "a.py").write_text(f"def f():\n{body}\n\n\n# long: a table\ndef g():\n{body}\n")
    assert long_functions_without_reason(tmp_path, ("pkg",)) == ["pkg/a.py:1 f (71 lines)"]
