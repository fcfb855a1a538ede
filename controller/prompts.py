"""The controller's system prompt and the rig's feedback messages, written for this rig.

The controller is told the *shape* of ``prompt`` (type, characters, lines, an estimate in worker
tokens) and never any of its content: reading it is the point of the REPL.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DocShape:
    chars: int
    lines: int
    est_worker_tokens: int
    chars_per_token: float


def describe_shape(doc: str, chars_per_token: float) -> DocShape:
    return DocShape(
        chars=len(doc),
        lines=doc.count("\n") + (1 if doc and not doc.endswith("\n") else 0),
        est_worker_tokens=int(len(doc) / max(chars_per_token, 0.1)),
        chars_per_token=chars_per_token,
    )


def system_prompt(
    shape: DocShape,
    *,
    chunk_budget_tokens: int,
    chunk_budget_chars: int,
    max_iterations: int,
    max_sub_calls: int,
    can_nest: bool,
    sub_calls_enabled: bool = True,
) -> str:
    sub = (
        f"""
Two helpers send text to a worker language model and return its reply as a string:
- `sub_call(chunk, instruction)` -> str
- `sub_call_batch(chunks, instruction)` -> list[str]  (one instruction for every chunk), or
  `sub_call_batch([(chunk, instruction), ...])` -> list[str]. Batched calls run concurrently: prefer them.
The worker reads at most {chunk_budget_tokens} tokens per chunk (about {chunk_budget_chars} characters of this
document; the variable `CHUNK_BUDGET_CHARS` holds that number). Larger chunks are refused with SubCallError.
You may make at most {max_sub_calls} sub_calls in total. The worker is a smaller model: give it short, precise
instructions and ask for answers that are easy to parse (e.g. "Reply with only a number").
{"A sub_call here runs a full recursive session of its own over its chunk, so it can handle long chunks well." if can_nest else ""}"""
        if sub_calls_enabled
        else "\nThere is no worker model in this session: answer with code alone (regular expressions, counting, parsing).\n"
    )
    return f"""You answer a question about a long document that you cannot read directly.

The document is loaded in a Python REPL as the variable `prompt`: a str of {shape.chars:,} characters in
{shape.lines:,} lines (about {shape.est_worker_tokens:,} worker tokens). You see only what your code prints.
Printed output is cut after a few thousand characters, so print summaries, counts and short excerpts,
never the whole document.
{sub}
How to work:
- Write exactly one code block per reply, fenced as ```repl ... ```, then stop and wait for its output.
- State persists between blocks. Explore the document's structure first (length, markers, a few short
  slices), then compute the answer with code, using the worker for reading comprehension.
- Do not guess: base the answer on what your code found.

How to finish (on its own line, outside any code block):
- FINAL(your answer)          to answer with literal text, or
- FINAL_VAR(variable_name)    to answer with the value of a REPL variable.
Inside a code block you can also call FINAL(value). You have at most {max_iterations} replies.
If the question asks for a particular answer format (for example \\boxed{{}}), put that format in your final answer.
"""


def first_user_message(question: str, instructions: str | None = None) -> str:
    """The question, and the dataset's task instructions when it has them: they sit at the top of
    `prompt` in OOLONG and carry the answer format, which a controller must not have to discover."""
    task = (
        "Task instructions (they also stand at the top of `prompt`; follow them, in particular the answer "
        f"format, in your FINAL answer):\n<<<\n{instructions.strip()}\n>>>\n\n"
        if instructions and instructions.strip() else ""
    )
    return (
        f"{task}Question: {question}\n\n"
        "You have not looked at `prompt` yet. Start by exploring its structure with a ```repl block."
    )


def cell_feedback(
    output: str,
    *,
    truncated_from: int | None,
    notices: list[str],
    iteration: int,
    max_iterations: int,
    finish: str = "FINAL(...) / FINAL_VAR(...)",
) -> str:
    parts = [f"REPL output:\n```\n{output if output.strip() else '(no output)'}\n```"]
    if truncated_from is not None:
        parts.append(
            f"[output truncated: showing the first part of {truncated_from:,} characters; print less, or slice]"
        )
    parts.extend(f"[rig] {n}" for n in notices)
    left = max_iterations - iteration
    parts.append(f"[{left} repl turn(s) left] Continue with one ```repl block, or finish with {finish}.")
    return "\n".join(parts)


FORMAT_ERROR = (
    "[rig] I found no ```repl code block and no FINAL(...)/FINAL_VAR(...) line at the start of a line in your reply. "
    "Write one ```repl block, or finish with FINAL(answer) on its own line."
)

FORCE_FINAL = (
    "[rig] {reason} Give your final answer now, on its own line, as FINAL(answer) or FINAL_VAR(variable_name). "
    "Do not write more code."
)


def final_var_missing(name: str) -> str:
    return (
        f"[rig] FINAL_VAR({name}) failed: there is no variable named {name!r} in the REPL. "
        "Create it in a ```repl block first, or answer with FINAL(answer)."
    )


WORKER_SYSTEM = "You are a careful reader. Answer the instruction using only the given text. Be brief."


def worker_messages(chunk: str, instruction: str, system: str | None = None) -> list[dict[str, str]]:
    """The worker sees the chunk first and the instruction last, closest to where it answers."""
    return [
        {"role": "system", "content": system or WORKER_SYSTEM},
        {"role": "user", "content": f"Text:\n{chunk}\n\nInstruction: {instruction}"},
    ]
