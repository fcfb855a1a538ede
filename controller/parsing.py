"""Reading the controller's turns: code cells and final answers.

Rules (each one is a test in tests/unit/test_parsing.py):
- a cell is a ```repl or ```python fenced block; other languages are prose;
- ``FINAL(...)`` / ``FINAL_VAR(name)`` count only outside code, at the start of a line, so a model
  *talking about* FINAL in a sentence, or writing it inside a cell, does not end the run by accident
  (inside a cell, calling ``FINAL(x)`` is a real function call handled by the sandbox);
- ``FINAL(...)``'s argument may contain nested and quoted parentheses and span lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE_OPEN = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*$")
_FENCE_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")
CODE_LANGS = {"repl", "python", "py"}
_FINAL_START = re.compile(r"^[ \t]*(?:\*\*)?(FINAL_VAR|FINAL)[ \t]*\(")


@dataclass
class Final:
    kind: str  # "FINAL" or "FINAL_VAR"
    value: str  # the answer text, or the variable name


@dataclass
class ParsedTurn:
    code_blocks: list[str]
    final: Final | None
    prose: str  # the text outside any fenced block

    @property
    def code(self) -> str | None:
        return self.code_blocks[0] if self.code_blocks else None


def split_fences(text: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Return ([(lang, body), ...], prose_lines). An unclosed fence runs to the end of the text."""
    blocks: list[tuple[str, str]] = []
    prose: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = _FENCE_OPEN.match(lines[i])
        if m and (m.group(1) or _has_close(lines, i + 1)):
            lang = (m.group(1) or "").lower()
            body: list[str] = []
            i += 1
            while i < len(lines) and not _FENCE_CLOSE.match(lines[i]):
                body.append(lines[i])
                i += 1
            i += 1  # skip the closing fence (or run past the end)
            blocks.append((lang, "\n".join(body)))
            continue
        prose.append(lines[i])
        i += 1
    return blocks, prose


def _has_close(lines: list[str], start: int) -> bool:
    return any(_FENCE_CLOSE.match(x) for x in lines[start:])


def _balanced_arg(text: str, open_idx: int) -> str | None:
    """Argument text of a call whose '(' is at ``open_idx``; respects nesting and string quotes."""
    depth = 0
    quote: str | None = None
    i = open_idx
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = None
                continue
        elif c in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else c
            i += len(quote)
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
        i += 1
    return None


def find_final(prose: str) -> Final | None:
    """The first line-anchored FINAL(...) or FINAL_VAR(...) in prose; the argument must be balanced."""
    offset = 0
    for line in prose.splitlines(keepends=True):
        m = _FINAL_START.match(line)
        if m:
            open_idx = offset + m.end() - 1
            arg = _balanced_arg(prose, open_idx)
            if arg is not None:
                value = arg.strip()
                if m.group(1) == "FINAL_VAR":
                    return Final("FINAL_VAR", value.strip("\"'` "))
                return Final("FINAL", value)
        offset += len(line)
    return None


def parse_turn(text: str) -> ParsedTurn:
    blocks, prose_lines = split_fences(text)
    code = [body for lang, body in blocks if lang in CODE_LANGS and body.strip()]
    prose = "\n".join(prose_lines)
    return ParsedTurn(code_blocks=code, final=find_final(prose), prose=prose)


def closed_cell_end(text: str) -> int | None:
    """Index just past the first *closed* ```repl/```python block, or None.

    Used to stop generation after one cell: the model must see the cell's output before it
    writes more, otherwise it hallucinates the output.
    """
    pos = 0
    lines = text.splitlines(keepends=True)
    in_code = False
    for line in lines:
        stripped = line.rstrip("\r\n")
        if not in_code:
            m = _FENCE_OPEN.match(stripped)
            if m and (m.group(1) or "").lower() in CODE_LANGS:
                in_code = True
        elif _FENCE_CLOSE.match(stripped) and line.endswith("\n"):
            return pos + len(line)
        elif _FENCE_CLOSE.match(stripped) and pos + len(line) == len(text):
            return len(text)
        pos += len(line)
    return None


def truncate_cell(text: str) -> str:
    """Cut a response after its first closed code cell (what a stop sequence would have done)."""
    end = closed_cell_end(text)
    return text if end is None else text[:end]
