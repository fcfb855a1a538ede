"""Text from the kernel made safe to record: valid UTF-8, bounded length.

Why: a cell can print a lone surrogate (`print("\\ud800")`); Python strings hold it, but UTF-8
cannot, and a JSON record that contains it fails to save. Every string the parent takes from
the kernel passes through here before it reaches a CellResult or a sub_call record.
"""
from __future__ import annotations

import re

_SURROGATES = re.compile("[\ud800-\udfff]")
# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides that reorder
# what a terminal shows (a "Trojan Source" answer)
_TERMINAL_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (unchanged, and fast, when valid)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)


def clip(text: str, limit: int) -> tuple[str, int]:
    """At most `limit` characters (the head and the tail kept), and how many were cut."""
    if len(text) <= limit:
        return text, 0
    cut = len(text) - limit
    head = limit - limit // 4
    return text[:head] + f"\n[... {cut} characters cut by the sandbox ...]\n" + text[len(text) - limit // 4:], cut


def decode_blob(data: bytes) -> str:
    """Kernel bytes to text: invalid UTF-8 (lone surrogates included) becomes U+FFFD."""
    return data.decode("utf-8", "replace")


def terminal_safe(text: str) -> str:
    """`text` for an operator's terminal: control and escape sequences shown as `\\x1b`-style escapes.

    Why: an answer is model output, and model output may carry escape sequences that retitle the
    window, rewrite earlier lines or hide text. Records keep the raw text; only what is printed
    to a terminal passes through here.
    """
    return _TERMINAL_UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), clean_text(text))
