"""Find ``\\boxed{...}`` answers in model output, with balanced braces.

The official OOLONG scorer uses two regexes (``\\boxed{\\text{X}}`` first, then
``\\boxed{+X}+`` with ``X`` free of ``}``), so ``\\boxed{\\frac{1}{2}}`` becomes
``\\frac{1``. Here a box's content runs to its *matching* brace instead, and the
priority order of the official code is kept: the first box whose whole content is
``\\text{X}`` wins, otherwise the first box. For every answer OOLONG-real asks for
(integers, names, comma lists) the two readings agree.
"""
from __future__ import annotations

from dataclasses import dataclass

BOX_COMMAND = "\\boxed"


@dataclass(frozen=True)
class Box:
    """One ``\\boxed{...}``: where it starts in the text and its raw content."""

    start: int
    content: str


def _matching_brace(text: str, open_at: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_at``; ``None`` if unbalanced.

    ``\\{`` and ``\\}`` are LaTeX literal braces and do not change the depth.
    """
    depth = 0
    i = open_at
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "\\" and i + 1 < n and text[i + 1] in "{}":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def find_boxes(text: str) -> list[Box]:
    """Every ``\\boxed{...}`` in order. A box must open with ``{`` right after
    ``\\boxed`` (as in the official regex); an unclosed box (a truncated output) is
    skipped, like the official regex, which needs a closing ``}``."""
    boxes: list[Box] = []
    pos = 0
    while True:
        at = text.find(BOX_COMMAND, pos)
        if at < 0:
            return boxes
        brace = at + len(BOX_COMMAND)
        pos = brace
        if brace >= len(text) or text[brace] != "{":
            continue
        close = _matching_brace(text, brace)
        if close is None:
            continue
        boxes.append(Box(start=at, content=text[brace + 1 : close]))
        pos = close + 1


def unwrap_braces(content: str) -> str:
    """Drop redundant outer brace pairs: ``{{12}}`` -> ``12``.

    The OOLONG prompts literally say ``\\boxed{{}}`` (a non-f-string), so models
    often answer ``\\boxed{{12}}``; the official regex (``\\boxed[{]+``) reads 12.
    A brace pair is only dropped when the first ``{`` closes at the very end.
    """
    while content.startswith("{"):
        close = _matching_brace(content, 0)
        if close != len(content) - 1:
            break
        content = content[1:-1]
    return content


def text_command_argument(content: str, command: str = "\\text") -> str | None:
    """``X`` when ``content`` is exactly ``\\text{X}`` (balanced), else ``None``."""
    head = command + "{"
    if not content.startswith(head):
        return None
    close = _matching_brace(content, len(command))
    if close != len(content) - 1:
        return None
    return content[len(head) : -1]


def extract_boxed(text: str) -> str | None:
    """The official answer span: the first ``\\boxed{\\text{X}}``'s ``X``, else the first
    box's content (outer redundant braces dropped); ``None`` when there is no box.

    Note the priority: a ``\\boxed{\\text{...}}`` anywhere beats an earlier plain
    ``\\boxed{...}``, exactly as the official code tries its ``\\text`` regex first.
    """
    boxes = find_boxes(text)
    if not boxes:
        return None
    for box in boxes:
        inner = text_command_argument(unwrap_braces(box.content))
        if inner is not None:
            return inner
    return unwrap_braces(boxes[0].content)
