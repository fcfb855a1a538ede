"""The controller's system prompt and the rig's feedback messages, written for this rig.

The controller is told the *shape* of ``prompt`` (type, characters, lines, an estimate in worker
tokens) and never any of its content: reading it is the point of the REPL.
"""
from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
    models: list[str] | None = None,
) -> str:
    """The built-in system prompt; ``models``: the workers' names when a profile serves several (first: default)."""
    pick = (f"Both take an optional `model=` naming the worker model to ask: {', '.join(models)} "
            f"(without it: {models[0]}).\n" if models and len(models) > 1 else "")
    sub = (
        f"""
Two helpers send text to a worker language model and return its reply as a string:
- `sub_call(chunk, instruction)` -> str
- `sub_call_batch(chunks, instruction)` -> list[str]  (one instruction for every chunk), or
  `sub_call_batch([(chunk, instruction), ...])` -> list[str]. Batched calls run concurrently: prefer them.
{pick}The worker reads at most {chunk_budget_tokens} tokens per chunk (about {chunk_budget_chars} characters of this
document; the variable `CHUNK_BUDGET_CHARS` holds that number). Larger chunks are refused with SubCallError.
You may make at most {max_sub_calls} sub_calls in total. The worker is a smaller model: give it short, precise
instructions and ask for answers that are easy to parse (e.g. "Reply with only a number").
{"`rlm_query(chunk, instruction)` (and `rlm_query_batched`, taking what sub_call_batch takes) instead starts a full"
 " recursive session of its own over its chunk, with its own REPL, so it can handle long chunks well; it counts"
 " against the same budgets." if can_nest else ""}"""
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


def first_user_message(question: str, instructions: str | None = None, *, prologue: str | None = None,
                       max_iterations: int | None = None) -> str:
    """The question, and the dataset's task instructions when it has them: they sit at the top of
    `prompt` in OOLONG and carry the answer format, which a controller must not have to discover.
    ``prologue`` (controller.user_prologue) comes first; ``max_iterations`` adds the turn counter."""
    task = (
        "Task instructions (they also stand at the top of `prompt`; follow them, in particular the answer "
        f"format, in your FINAL answer):\n<<<\n{instructions.strip()}\n>>>\n\n"
        if instructions and instructions.strip() else ""
    )
    head = f"{prologue.strip()}\n\n" if prologue and prologue.strip() else ""
    counter = f"\n[turn 1 of {max_iterations}]" if max_iterations else ""
    return (
        f"{head}{task}Question: {question}\n\n"
        "You have not looked at `prompt` yet. Start by exploring its structure with a ```repl block." + counter
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
            f"[output truncated: it was {truncated_from:,} characters; shown are its first and last parts; "
            "print less, or slice]"
        )
    parts.extend(f"[rig] {n}" for n in notices)
    left = max_iterations - iteration
    parts.append(f"[turn {iteration + 1} of {max_iterations}; {left} left] Continue with one ```repl block, or "
                 f"finish with {finish}.")
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


def head_tail(text: str, limit: int) -> str:
    """``text`` cut to about ``limit`` characters, keeping its head and its tail (a cell's last lines often
    hold the result), with one marker line naming how much was left out between them."""
    if len(text) <= limit:
        return text
    head = (limit * 2) // 3
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut:,} characters left out ...]\n{text[len(text) - tail:]}"


# -- prompt files ------------------------------------------------------------------------------------------
# A prompt file is a str.format template (literal braces doubled: {{ }}), checked at load time. WHY
# str.format and not Jinja2: the prompts need names substituted, not logic, and a template that can only
# name values cannot reach attributes or run code when a profile comes from someone else.
PROMPTS_DIR = Path(__file__).resolve().parent.parent / "configs" / "prompts"

PLACEHOLDERS = {
    "doc_var": "the REPL variable holding the document (`prompt`, or `context` in the official dialect)",
    "doc_type": "its Python type, e.g. str",
    "doc_chars": "its length in characters",
    "doc_lines": "its line count",
    "doc_tokens": "its estimated length in worker tokens",
    "sub_call": "the one-shot worker call's name",
    "sub_call_batch": "the batched worker call's name",
    "rlm_query": "the call that starts a child RLM (its own REPL) over a text",
    "rlm_query_batched": "several child RLMs at once",
    "final": "how a reply finishes with literal text",
    "final_var": "how a reply finishes with a variable's value",
    "chunk_budget_tokens": "worker tokens one chunk may hold",
    "chunk_budget_chars": "about that many characters of this document",
    "max_iterations": "replies the controller may write",
    "max_sub_calls": "worker calls per run, nested runs included",
    "max_depth": "rlm.max_depth",
    "models": "the worker models a call may name with model= (comma-separated)",
    "default_model": "the model a call without model= uses",
}

# The dialect's names (rlm.dialect; `rig` until the profile says otherwise).
DIALECT_NAMES = {
    "rig": {"doc_var": "prompt", "sub_call": "sub_call", "sub_call_batch": "sub_call_batch",
            "rlm_query": "rlm_query", "rlm_query_batched": "rlm_query_batched",
            "final": "FINAL(answer)", "final_var": "FINAL_VAR(variable_name)"},
    "official": {"doc_var": "context", "sub_call": "llm_query", "sub_call_batch": "llm_query_batched",
                 "rlm_query": "rlm_query", "rlm_query_batched": "rlm_query_batched",
                 "final": 'answer["content"] = ...; answer["ready"] = True',
                 "final_var": 'answer["content"] = variable_name; answer["ready"] = True'},
}


class PromptFileError(ValueError):
    """A prompt file that is missing or names a placeholder the rig does not fill."""


def find_prompt_file(ref: str, base: Path | None = None) -> Path:
    """A path (absolute, or relative to ``base``, the profile's folder), or a shipped name in configs/prompts/."""
    cands = [Path(ref).expanduser()]
    if base is not None:
        cands.append(base / ref)
    cands += [PROMPTS_DIR / ref, PROMPTS_DIR / f"{ref}.txt"]
    for c in cands:
        if c.is_file():
            return c
    shipped = sorted(p.stem for p in PROMPTS_DIR.glob("*.txt"))
    raise PromptFileError(f"controller.system_prompt_file {ref!r}: no such file (shipped prompts: {shipped})")


def check_template(text: str, where: str) -> None:
    """Refuse a template whose fields are not plain known names (or whose braces do not parse)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as e:
        raise PromptFileError(f"{where}: not a valid template ({e}); write literal braces as {{{{ }}}}") from None
    for f in fields:
        if f not in PLACEHOLDERS:
            raise PromptFileError(f"{where}: unknown placeholder {{{f}}}; known: {', '.join(sorted(PLACEHOLDERS))}")


def render_prompt_file(path: Path, values: dict[str, Any]) -> str:
    """The system prompt from a checked template and the run's values."""
    text = path.read_text(encoding="utf-8")
    check_template(text, str(path))
    return text.format_map({k: values[k] for k in PLACEHOLDERS})


def system_for(cfg: Any, shape: DocShape, doc_type: str, *, chunk_budget_tokens: int, chunk_budget_chars: int,
               can_nest: bool, sub_calls_enabled: bool) -> str:
    """The run's system prompt: the profile's ``controller.system_prompt_file`` rendered, else the built-in one."""
    rlm = cfg.rlm
    if not cfg.controller.system_prompt_file:
        return system_prompt(shape, chunk_budget_tokens=chunk_budget_tokens, chunk_budget_chars=chunk_budget_chars,
                             max_iterations=rlm.max_iterations, max_sub_calls=rlm.max_sub_calls, can_nest=can_nest,
                             sub_calls_enabled=sub_calls_enabled, models=list(cfg.worker_map()))
    names = DIALECT_NAMES.get(getattr(rlm, "dialect", "rig"), DIALECT_NAMES["rig"])
    workers = cfg.worker_map()
    values = {**names, "doc_type": doc_type, "doc_chars": shape.chars, "doc_lines": shape.lines,
              "doc_tokens": shape.est_worker_tokens, "chunk_budget_tokens": chunk_budget_tokens,
              "chunk_budget_chars": chunk_budget_chars, "max_iterations": rlm.max_iterations,
              "max_sub_calls": rlm.max_sub_calls, "max_depth": rlm.max_depth, "models": ", ".join(workers),
              "default_model": cfg.default_worker_name()}
    return render_prompt_file(find_prompt_file(cfg.controller.system_prompt_file), values)
