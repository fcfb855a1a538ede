"""Model output printed to an operator's terminal shows escape sequences instead of obeying them (issue 20)."""
from __future__ import annotations

from repl.text import terminal_safe


def test_control_and_escape_sequences_are_shown_not_obeyed():
    raw = "answer\x1b]0;retitled\x07\x1b[2J\rover\u202eflip\x9b\x7f"
    safe = terminal_safe(raw)
    assert safe == "answer\\x1b]0;retitled\\x07\\x1b[2J\\rover\\u202eflip\\x9b\\x7f"
    assert not any(ord(c) < 32 and c not in "\n\t" for c in safe)


def test_plain_text_newlines_tabs_and_unicode_are_kept():
    text = "line 1\n\tline 2: héllo 日本 ✓"
    assert terminal_safe(text) == text
    assert terminal_safe("\ud800") == "\ufffd"  # never fails on a lone surrogate either
