"""Generate a tiny OOLONG-synth-shaped file (``trec_coarse`` columns and answer formats)
for tests and demos, with golds computed from the hidden labels of its own lines.

Not OOLONG data: the questions, dates and users are invented here from a seed; only the
*schema* and the answer/answer_type conventions follow the hub dataset. Regenerate the
bundled file with ``python -m experiments.datasets.oolong_synth.make_sample [OUT]``; the output is
byte-for-byte deterministic.
"""
from __future__ import annotations

import datetime as _dt
import json
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from rlm_rig.experiments.datasets.bundled import DATA_DIR

LABELS = ("abbreviation", "entity", "description and abstract concept", "human being", "location", "numeric value")
_TEMPLATES = {
    "abbreviation": ("What does the abbreviation {w} stand for?", "What is {w} short for?"),
    "entity": ("What kind of {w} is used to make a drum?", "Which {w} is shown on the old flag?"),
    "description and abstract concept": ("Why do people fear the {w}?", "What is the meaning of the word {w}?"),
    "human being": ("Who first described the {w}?", "Who painted the famous {w}?"),
    "location": ("Where is the {w} located?", "In which country is the {w}?"),
    "numeric value": ("How many legs does a {w} have?", "How far is the {w} from the coast?"),
}
_WORDS = ("lantern", "harbor", "glacier", "comet", "violin", "orchard", "canal", "falcon", "temple", "compass", "NASA", "UNESCO")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December")


def _window(rng: random.Random, n_items: int) -> list[dict[str, Any]]:
    users = [rng.randint(10_000, 99_999) for _ in range(5)]
    start = _dt.date(2023, 1, 1)
    items = []
    for _ in range(n_items):
        label = rng.choice(LABELS[: 4 + rng.randint(0, 2)])  # skewed, so counts differ
        items.append({
            "date": start + _dt.timedelta(days=rng.randint(0, 120)),
            "user": rng.choice(users[: 2 + rng.randint(0, 3)]),
            "text": rng.choice(_TEMPLATES[label]).format(w=rng.choice(_WORDS)),
            "label": label,
        })
    return items


def _texts(items: list[dict[str, Any]]) -> tuple[str, str]:
    head = (
        f"The following lines contain {len(items)} general-knowledge questions, one per line. Each question's "
        f"answer falls into one of {len(LABELS)} categories: {', '.join(repr(l) for l in LABELS)}.\n\n"
        "Answer the questions about aggregate label statistics exactly; do not estimate.\n\n"
    )
    plain, labelled = [], []
    for it in items:
        line = f"Date: {it['date'].strftime('%b %d, %Y')} || User: {it['user']} || Instance: {it['text']}"
        plain.append(line)
        labelled.append(f"{line} || Label: {it['label']}")
    return head + "\n".join(plain) + "\n", head + "\n".join(labelled) + "\n"


def _tasks(items: list[dict[str, Any]]) -> list[tuple[str, str, str, str, Any]]:
    """(task_group, task, answer_type, question, answer list)."""
    counts = Counter(it["label"] for it in items)
    present = [l for l in LABELS if counts[l]]
    top = max(counts.values())
    low = min(counts.values())
    out: list[tuple[str, str, str, str, Any]] = []
    label_list = ", ".join(present)
    if sum(1 for v in counts.values() if v == top) == 1:
        out.append(("counting", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.LABEL",
                    f"In the above data, which of the labels is the most common? Give your final answer in the form 'Label: answer' where answer is one of the labels: {label_list}.",
                    [l for l in present if counts[l] == top]))
    out.append(("counting", "TASK_TYPE.LEAST_FREQ", "ANSWER_TYPE.LABEL",
                f"In the above data, which of the labels is the least common? Give your final answer in the form 'Label: answer' where answer is one of the labels: {label_list}.",
                [l for l in present if counts[l] == low]))
    a, b = present[0], present[1]
    rel = "more common than" if counts[a] > counts[b] else "less common than" if counts[a] < counts[b] else "same frequency as"
    out.append(("counting", "TASK_TYPE.RELATIVE_FREQ", "ANSWER_TYPE.COMPARISON",
                f"In the above data, is label '{a}' more common, less common, or the same frequency as label '{b}'? Give your final answer in the form 'Answer: {a} is [X] {b}', where [X] is 'more common than', 'less common than', or 'same frequency as'.",
                [rel]))
    for label in present[:2]:
        out.append(("counting", "TASK_TYPE.NUMERIC_ONE_CLASS", "ANSWER_TYPE.NUMERIC",
                    f"In the above data, how many data points should be classified as label '{label}'? Give your final answer in the form 'Answer: number'.",
                    [counts[label]]))
    users = Counter(it["user"] for it in items).most_common()
    if len(users) == 1 or users[0][1] > users[1][1]:
        out.append(("user", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.USER",
                    "In the above data, which user has the most instances? Give your final answer in the form 'User: [X]'.",
                    [users[0][0]]))
    dates = Counter(it["date"] for it in items).most_common()
    if len(dates) == 1 or dates[0][1] > dates[1][1]:
        out.append(("timeline", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.DATE",
                    "In the above data, which date is represented most often? Give your final answer in the form 'Date: [X]', where [X] is the date in the format MM/DD/YYYY.",
                    [dates[0][0]]))
    months = Counter((it["date"].year, it["date"].month) for it in items).most_common()
    if len(months) == 1 or months[0][1] > months[1][1]:
        (year, month), _ = months[0]
        out.append(("timeline", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.MONTH_YEAR",
                    "In which month and year are there the most instances? Give your final answer in the form 'Answer: [month] [year]'.",
                    [f"{_MONTHS[month - 1]} {year}"]))
    return out


def build_synth_sample_rows(seed: int = 0, context_lens: tuple[int, ...] = (1024, 2048)) -> list[dict[str, Any]]:
    """Rows with the hub's columns; one window per ``context_len`` (more items in the longer one)."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for w, context_len in enumerate(context_lens):
        items = _window(rng, n_items=context_len // 64)
        text, labelled = _texts(items)
        for k, (group, task, answer_type, question, answer) in enumerate(_tasks(items)):
            rows.append({
                "id": 10_000 * (w + 1) + k,
                "context_len": context_len,
                "dataset": "trec_coarse",
                "context_window_text": text,
                "context_window_text_with_labels": labelled,
                "question": question,
                "task_group": group,
                "task": task,
                "answer": repr(answer),  # python list literal, as on the hub ("['entity']", "[12]", "[datetime.date(...)]")
                "answer_type": answer_type,
                "input_subset": "False",
                "num_labels": len(LABELS),
                "context_window_id": w,
            })
    return rows


def write_synth_sample(path: str | Path | None = None, seed: int = 0) -> Path:
    path = Path(path) if path is not None else DATA_DIR / "oolong-synth" / "trec_coarse-mini.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in build_synth_sample_rows(seed)), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write_synth_sample(sys.argv[1] if len(sys.argv) > 1 else None))
