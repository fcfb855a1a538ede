"""The controller's context guard: keep every turn inside the controller's window.

WHY: a controller conversation grows by a code cell and its (truncated) output every turn; at 4K
characters of output per cell a 32K-token window fills in a dozen turns, and a server answers the
turn that overflows with HTTP 400. Before each turn the guard counts the conversation's tokens (the
backend's own count when it has one: vLLM's /tokenize, the transformers tokenizer) and, if the turn
would not fit, acts in this order:

1. replace the oldest cell outputs (user messages after the question, never the newest) with a short
   notice telling the model they were removed and that its REPL variables still hold the values;
2. shorten the reply budget, down to ``min_new_tokens``;
3. give up with :class:`ContextFull`: the loop then ends with ``stop_reason: context`` and the best
   answer it can still get.

A server 400 for context length (a count that was off, or no count at all) is handled the same way:
the loop calls :meth:`ContextGuard.shrink` and retries, and never crashes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

Messages = list[dict[str, str]]

TRIMMED = (
    "[rig] The output of this cell was removed to fit your context window ({window:,} tokens). "
    "Variables you set in the REPL still hold their values: print what you still need."
)


class ContextFull(RuntimeError):
    """No trimming makes the next turn fit the window."""


def estimate_tokens(messages: Messages) -> int:
    """A deliberately high estimate (3 characters a token, plus chat-template overhead) for backends
    that cannot count: overestimating trims a little early; underestimating would cost a 400."""
    return sum(math.ceil(len(m.get("content") or "") / 3) + 8 for m in messages) + 8


@dataclass
class ContextGuard:
    window: int
    count: Callable[[Messages], int] = estimate_tokens
    min_new_tokens: int = 256
    first_trimmable: int = 2  # messages[0] = system, messages[1] = the question: never trimmed
    trimmed: list[int] = field(default_factory=list)  # indices of messages whose content was replaced

    def _trim_one(self, messages: Messages) -> bool:
        """Replace the oldest untrimmed cell output (a user message, not the newest message)."""
        notice = TRIMMED.format(window=self.window)
        for i in range(self.first_trimmable, len(messages) - 1):
            m = messages[i]
            if m.get("role") == "user" and i not in self.trimmed and len(m.get("content") or "") > len(notice):
                m["content"] = notice
                self.trimmed.append(i)
                return True
        return False

    def fit(self, messages: Messages, max_new_tokens: int) -> int:
        """Trim `messages` in place until `count(messages) + reply` fits; return the reply budget to use.
        Raises ContextFull when even the smallest reply does not fit with every old output removed."""
        floor = min(max_new_tokens, self.min_new_tokens)
        while True:
            used = self.count(messages)
            if used + max_new_tokens <= self.window:
                return max_new_tokens
            if self._trim_one(messages):
                continue
            if used + floor <= self.window:
                return self.window - used
            raise ContextFull(
                f"the conversation needs {used:,} tokens + {floor} for a reply, over the {self.window:,}-token window "
                f"even with {len(self.trimmed)} old cell output(s) removed"
            )

    def shrink(self, messages: Messages) -> bool:
        """After a server's context-length 400: trim one more output. False when nothing is left to trim."""
        return self._trim_one(messages)


def guarded_generate(lm, messages: Messages, max_new_tokens: int, guard: ContextGuard | None, sampling=None):
    """``lm.generate`` inside the window: fit first, and on a server's context-length 400 trim once more
    (or halve the reply budget) and retry. Raises ContextFull when nothing is left to give. ``sampling``: the
    run's (controller.sampling_at(depth)), passed through."""
    if guard is None:
        return lm.generate(messages, max_new_tokens=max_new_tokens, sampling=sampling)
    from rlm_rig.worker.errors import ContextLengthError

    budget = guard.fit(messages, max_new_tokens)
    while True:
        try:
            return lm.generate(messages, max_new_tokens=budget, sampling=sampling)
        except ContextLengthError as e:
            if guard.shrink(messages):
                budget = guard.fit(messages, budget)
            elif budget > guard.min_new_tokens:
                budget = max(guard.min_new_tokens, budget // 2)
            else:
                raise ContextFull(f"the server still rejects the turn after every old output was removed: {e}") from None
