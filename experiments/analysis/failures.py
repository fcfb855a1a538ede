"""Why did an example lose points? A failure-mode taxonomy for rows with ``score < 1``.

Every failed row gets all the labels that apply, and one *primary* label: the first in
:data:`FAILURE_PRECEDENCE`. The order puts causes before symptoms, and the rig's own
trouble before the model's choices:

1. ``run_error``      the run itself broke: ``SampleRow.error`` or ``Trajectory.error`` is set.
2. ``sandbox_error``  a cell (any depth) was killed: timed out, restarted, or has a ``kill_reason``.
3. ``worker_error``   a sub_call (any depth) came back with an error (worker failure or nested run failure).
4. ``cap_hit``        a configured cap was hit at any depth (``caps_hit`` non-empty: max_iterations,
                      sub_calls, chunk_tokens, controller_tokens, cell_timeout, depth).
5. ``format_error``   a controller reply (any depth) had neither a code block nor a FINAL: the rig answered
                      with its format-error message (a later turn's user message starts with ``[rig] I found no``).
6. ``no_final``       no answer at all (``answer`` is None or blank).
7. ``parse_failure``  an answer, but the official parser found nothing to parse (OOLONG-real: no
                      ``\\boxed{}``; OOLONG-synth: no ``:``, the official "low" confidence), so the raw
                      text was compared, which can only match a string gold. S-NIAH reads the whole
                      output, and for a dataset name the scorers do not know nothing is claimed.
8. ``wrong_aggregation`` a count question (integer gold) whose final integer is not the sum of the integers
                      its (two or more) sub_calls returned: the controller mis-combined what its workers said.
9. ``worker_miscount`` the same, but the final integer *is* that sum: aggregation was faithful, so the
                      per-chunk counts were wrong (interp/ then asks whether the worker represented them).
10. ``wrong_answer``  the answer parsed and nothing else went wrong, and neither check above applies
                      (not a count question, unparseable replies, or fewer than two sub_calls).

A cap at max_iterations usually also means ``no_final``; the cap is the primary (the cause).
The multi-label counts in the report show every co-occurrence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rlm_rig.records.answers import as_int, find_int

FAILURE_PRECEDENCE: tuple[str, ...] = (
    "run_error",
    "sandbox_error",
    "worker_error",
    "cap_hit",
    "format_error",
    "no_final",
    "parse_failure",
    "wrong_aggregation",
    "worker_miscount",
    "wrong_answer",
)
# Start of controller.prompts.FORMAT_ERROR (a test keeps the two in step).
FORMAT_ERROR_PREFIX = "[rig] I found no"


@dataclass(frozen=True)
class FailureResult:
    labels: tuple[str, ...]  # in precedence order; empty for a row with score >= 1
    primary: str | None

    @property
    def label_string(self) -> str:
        return ";".join(self.labels)


# bm25-rag records the spans it retrieved as zero-cost sub_calls with this instruction (for context
# utilization); they are not model calls.
RETRIEVED_INSTRUCTION = "(retrieved)"


def model_sub_calls(traj: Any) -> list[Any]:
    """The sub_calls of one trajectory level that were real model calls the program asked for (the halves
    the resplit policy asked on its own are folded into the reply they replaced: `program_reply`)."""
    return [sc for sc in traj.sub_calls if sc.instruction != RETRIEVED_INSTRUCTION and sc.resplit_of is None]


def program_reply(sc: Any) -> str | None:
    """What the controller's program got from a sub_call: the resplit policy's combination, else the reply."""
    return sc.replaced_by if sc.replaced_by is not None else sc.response


def count_format_errors(traj: Any) -> int:
    """Controller replies the rig rejected for having no code and no FINAL, at any depth. The rig's
    answer to such a reply is the next turn's first new user message."""
    if traj is None:
        return 0
    n = 0
    for t in traj.walk():
        for turn in t.turns:
            for m in turn.messages_in:
                if m.get("role") == "user" and str(m.get("content", "")).startswith(FORMAT_ERROR_PREFIX):
                    n += 1
    return n


def answer_unparsed(dataset: str, answer: str) -> bool:
    """True when the official parser of ``dataset`` finds no answer span in ``answer``."""
    from rlm_rig.experiments.datasets.boxed import extract_boxed
    from rlm_rig.experiments.datasets.oolong_synth.score import parse_synth_response
    from rlm_rig.experiments.datasets.scoring import (
        OOLONG_REAL,
        OOLONG_SYNTH,
        canonical_dataset,
    )

    try:
        name = canonical_dataset(dataset)
    except ValueError:
        return False  # a dataset we do not know the official parser of: claim nothing
    if name == OOLONG_REAL:
        return extract_boxed(answer) is None
    if name == OOLONG_SYNTH:
        return parse_synth_response(answer)[1] == "low"
    return False  # S-NIAH and the generated sets compare the whole output: nothing to parse




def aggregation_verdict(row: Any, subs: list[Any]) -> str | None:
    """For a count question: did the final answer equal the sum of the sub_calls' integers?

    ``faithful`` / ``unfaithful``, or None when it cannot be checked (gold not an integer, fewer than
    two sub_calls, a reply without an integer, or a final answer that is not an integer).
    """
    if as_int(row.gold) is None or len(subs) < 2:
        return None
    final = as_int(row.parsed)
    if final is None:
        return None
    parts = [find_int(program_reply(sc)) for sc in subs]
    if any(p is None for p in parts):
        return None
    return "faithful" if sum(parts) == final else "unfaithful"


def classify_failure(row: Any, traj: Any | None) -> FailureResult:
    """Failure labels for one :class:`~records.trajectory.SampleRow` and its trajectory (or None)."""
    if row.score >= 1.0:
        return FailureResult(labels=(), primary=None)
    labels: set[str] = set()
    trajs = list(traj.walk()) if traj is not None else []
    if row.error or any(t.error for t in trajs) or (traj is not None and traj.stop_reason == "error"):
        labels.add("run_error")
    if any(c.timed_out or c.restarted or c.kill_reason for t in trajs for c in t.cells):
        labels.add("sandbox_error")
    if any(sc.error for t in trajs for sc in t.sub_calls):
        labels.add("worker_error")
    if any(t.caps_hit for t in trajs):
        labels.add("cap_hit")
    if count_format_errors(traj):
        labels.add("format_error")
    answer = row.answer
    if answer is None or not str(answer).strip():
        labels.add("no_final")
    elif answer_unparsed(row.dataset, answer):
        labels.add("parse_failure")
    if not labels and math.isnan(row.score):  # unscored (no gold: an `ask`, an imported log): no known wrong answer
        return FailureResult(labels=(), primary=None)
    if not labels:
        subs = model_sub_calls(traj) if traj is not None else []
        verdict = aggregation_verdict(row, subs)
        labels.add({"unfaithful": "wrong_aggregation", "faithful": "worker_miscount"}.get(verdict or "", "wrong_answer"))
    ordered = tuple(lab for lab in FAILURE_PRECEDENCE if lab in labels)
    return FailureResult(labels=ordered, primary=ordered[0])
