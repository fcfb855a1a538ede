"""`--doc` as a REPL context: a text file (one str), a .json / .jsonl file (a list or a dict), or a folder of
.txt files (a list of their texts, in name order). Bad input raises ContextFileError with one line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ContextFileError(ValueError):
    """The --doc path cannot be a context (missing, empty folder, malformed JSON, wrong top-level type)."""


def load_context_file(path: str | Path) -> Any:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix == ".txt" and f.is_file())
        if not files:
            raise ContextFileError(f"--doc {str(p)!r} is a folder with no .txt files")
        return [_text_file(f) for f in files]
    if not p.is_file():
        raise ContextFileError(f"--doc {str(p)!r} is not a file or a folder")
    if p.suffix == ".json":
        return _json_file(p)
    if p.suffix == ".jsonl":
        return _jsonl_file(p)
    return _text_file(p)


def _text_file(p: Path) -> str:
    """The file's text byte-faithful: no newline translation (\r\n and \r stay), and an invalid byte becomes a
    lone surrogate (surrogateescape), which the sandbox carries (UTF-8 "surrogatepass") instead of U+FFFD."""
    return p.read_bytes().decode("utf-8", "surrogateescape")


def _json_file(p: Path) -> Any:
    try:
        value = json.loads(p.read_text(errors="replace"))
    except (ValueError, RecursionError) as exc:
        raise ContextFileError(f"--doc {str(p)!r} is not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(value, (list, dict)):
        raise ContextFileError(f"--doc {str(p)!r} holds a JSON {type(value).__name__}; a context file needs a list "
                               "or an object")
    return value


def _jsonl_file(p: Path) -> list[Any]:
    items = []
    for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except (ValueError, RecursionError):
            raise ContextFileError(f"--doc {str(p)!r}: line {i} is not valid JSON") from None
    return items
