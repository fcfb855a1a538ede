"""What the controller is told under each dialect beyond the rig's own prompt (controller/prompts.py):
the official dialect's system prompt, the shape of a list/dict context, the custom tools, the budgets a
child run shares with its parent. All text here is this rig's own wording.

WHY a dialect: a controller trained on the official RLM library's REPL (``context``, ``llm_query``,
``rlm_query``, ``answer``) can run here natively, and both finishing protocols can be compared on one model.
"""
from __future__ import annotations

from dataclasses import dataclass

from rlm_rig.controller.prompts import DocShape

MAX_SIZES_SHOWN = 20


@dataclass
class Budgets:
    """What is left of the budgets a child run shares with its parent (None: no such cap)."""

    sub_calls: int
    controller_tokens: int
    wall_s: float | None

    def line(self) -> str:
        wall = f", {self.wall_s:.0f} s of wall clock" if self.wall_s is not None else ""
        return (f"Budgets shared with the run that called you, still left: {self.sub_calls} worker calls, "
                f"{self.controller_tokens:,} controller tokens{wall}.")


def context_shape(summary: dict | None, shape: DocShape) -> str:
    """The context's type, length and per-item sizes: never its content (nor a dict's keys)."""
    if not summary or summary.get("type") == "str":
        return (f"a str of {shape.chars:,} characters in {shape.lines:,} lines "
                f"(about {shape.est_worker_tokens:,} worker tokens)")
    sizes = summary.get("item_chars") or []
    shown = ", ".join(f"{n:,}" for n in sizes[:MAX_SIZES_SHOWN]) + (", ..." if len(sizes) > MAX_SIZES_SHOWN else "")
    stats = f"; smallest {min(sizes):,}, largest {max(sizes):,}" if sizes else ""
    what = "list" if summary.get("type") == "list" else "dict (str keys)"
    return (f"a {what} of {summary.get('length', len(sizes)):,} items, {shape.chars:,} characters of text in all "
            f"(about {shape.est_worker_tokens:,} worker tokens). Item sizes in characters: [{shown}]{stats}")


def tools_section(docs: dict[str, str]) -> str:
    if not docs:
        return ""
    lines = "\n".join(f"- {doc}" for doc in docs.values())
    return ("\nCustom tools, callable from your code (arguments and results are plain JSON values: str, numbers, "
            f"lists, dicts):\n{lines}\n")


def official_system_prompt(shape_text: str, *, chunk_budget_tokens: int, chunk_budget_chars: int,
                           max_iterations: int, max_sub_calls: int, can_recurse: bool, tools: str = "") -> str:
    rlm = ("`rlm_query(prompt)` starts a child session like this one, with its own REPL in which `context` is "
           "`prompt`; use it for sub-tasks that need several steps of code and reading."
           if can_recurse else
           "`rlm_query(prompt)` is available but, at this depth, it is a plain worker call like `llm_query`.")
    return f"""You answer a query using a Python REPL that holds a large context you cannot read directly.

The REPL variable `context` is {shape_text}. You see only what your code prints, and printed output is cut after
a few thousand characters: print sizes, counts and short slices, never the whole context.

Functions in the REPL:
- `llm_query(prompt, model=None)` -> str: one call to a worker language model. It reads at most
  {chunk_budget_tokens} tokens (about {chunk_budget_chars} characters), so put a slice of the context in `prompt`
  together with a precise instruction. A failed call returns a string starting with "Error:".
- `llm_query_batched(prompts, model=None)` -> list[str]: many such calls at once, in order. Prefer it for many slices.
- {rlm} `rlm_query_batched(prompts, model=None)` -> list[str] runs several at once.
- `SHOW_VARS()` -> str: the variables you have made so far and their types.
You may make at most {max_sub_calls} worker calls in total.
{tools}
How to work:
- Write one code block per reply, fenced as ```repl ... ```, then wait for its output. Variables persist.
- Look at the structure of `context` first, then compute the answer with code, using the worker to read.

How to finish: in a code block, put your answer text in `answer["content"]` and set `answer["ready"] = True`.
The run ends after that block. Until then `answer["ready"]` is False. You have at most {max_iterations} replies.
If the query asks for a particular answer format (for example \\boxed{{}}), use it in `answer["content"]`.
"""


def official_first_message(question: str, instructions: str | None, budgets: Budgets | None) -> str:
    if question.strip():
        task = f"Query: {question}"
        if instructions and instructions.strip():
            task = f"Task instructions (follow their answer format):\n<<<\n{instructions.strip()}\n>>>\n\n{task}"
    else:
        task = "Your task is written in `context` itself: read it there."
    tail = f"\n\n{budgets.line()}" if budgets is not None else ""
    return f"{task}{tail}\n\nYou have not looked at `context` yet: start by exploring it with a ```repl block."


OFFICIAL_FINISH = 'answer["content"] = ... then answer["ready"] = True'

OFFICIAL_FORMAT_ERROR = (
    "[rig] Your reply had no ```repl code block. Write one; to finish, set answer[\"content\"] and then "
    "answer[\"ready\"] = True inside it."
)

OFFICIAL_FORCE_FINAL = (
    "[rig] {reason} Reply now with one ```repl block that sets answer[\"content\"] and answer[\"ready\"] = True, "
    "or with the answer text alone."
)
