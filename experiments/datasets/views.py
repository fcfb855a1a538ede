"""What each model sees: the split of every dataset into task instructions and question, and, per
method, the exact text each model is given. The run folder keeps this (``eval.json``'s
``model_views``) so a reader of the results knows what the numbers were measured on.

WHY a split: OOLONG puts its task instructions (answer format, "do not guess", the player-to-character
map) at the top of ``context_window_text``, not in ``question``. The official evaluation hands a model
``context_window_text + "\\n" + question``, so a single-call baseline reads them for free; an RLM
controller that only got ``question`` would lose every point on format. The controller therefore gets
the instructions next to the question, and ``prompt`` stays the unchanged ``context_window_text``.
"""
from __future__ import annotations

import re
from typing import Any

_SYNTH_FIRST_RECORD = re.compile(r"^Date: [^\n]*\|\|", re.MULTILINE)
# on a line of its own: the official prompt also names the marker inside its first sentence
_EPISODE_START = re.compile(r"^\[START OF EPISODE\]$", re.MULTILINE)


def split_instructions(dataset: str, context: str) -> str | None:
    """The task instructions at the top of ``context`` (a prefix of it), or None when the dataset has none.

    - oolong-real: everything before the first ``[START OF EPISODE]`` line (prompt + player/character map);
    - oolong-synth: everything before the first ``Date: ... ||`` record line;
    - sniah and the edge-case generators: none in the context (their generators set them explicitly).
    """
    if dataset == "oolong-real":
        m = _EPISODE_START.search(context)
        return context[: m.start()] if m and m.start() > 0 else None
    if dataset == "oolong-synth":
        m = _SYNTH_FIRST_RECORD.search(context)
        return context[: m.start()] if m and m.start() > 0 else None
    return None


# method -> model -> what it is given (text, with the placeholders named in the docs)
METHOD_VIEWS: dict[str, dict[str, str]] = {
    "rlm": {
        "controller": "system prompt (shape of `prompt`, REPL rules, caps) + first user message: the task "
                      "instructions (when the dataset has them) and the question; then REPL outputs only",
        "repl": "`prompt` = the full, unchanged context; `question`; `CHUNK_BUDGET_CHARS`",
        "worker": "per sub_call: the chunk + the controller's instruction (worker system prompt)",
    },
    "no-subcall": {
        "controller": "as rlm, told there is no worker",
        "repl": "as rlm",
    },
    "direct": {
        "answerer": "one user message: context + \"\\n\" + question (the official input); when it does not fit, "
                    "the part after the task instructions is truncated by eval.direct_truncation and the "
                    "instructions are kept; generated sets: context + instructions + question",
    },
    "chunk-aggregate": {
        "worker": "per chunk of the context: the chunk + the question + 'answer only from this excerpt'",
        "answerer": "task instructions + question + the per-chunk answers, asked to combine them in the "
                    "instructions' answer format",
    },
    "bm25-rag": {
        "answerer": "task instructions + the BM25 top-k chunks (document order) + question",
    },
}

def model_views(dataset: str, method: str, example_instructions: str | None = None) -> dict[str, Any]:
    """The record kept in the run folder: the dataset's split, what each model of ``method`` sees, and
    the first example's instructions verbatim (they are the same for every row of an OOLONG dataset)."""
    from rlm_rig.experiments.datasets.registry import lookup

    ds = lookup(dataset)
    split = ds.split if ds else "no instructions"
    return {
        "dataset": dataset,
        "split": split,
        "method": method,
        "models": METHOD_VIEWS.get(method, {}),
        "instructions_example": example_instructions,
    }
