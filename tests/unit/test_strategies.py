"""Strategy classification from the AST of controller cells: known cells, known labels."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from rlm_rig.records.trajectory import CellRecord, ControllerTurn, SubCallRecord, Trajectory
from rlm_rig.experiments.analysis.code_strategies import NO_CONTROLLER, STRATEGY_PRECEDENCE, classify_cells, classify_trajectory


def labels(*cells: str) -> set[str]:
    return set(classify_cells(cells).labels)


@pytest.mark.parametrize(
    "code",
    [
        "print(prompt[:2000])",
        "print(len(prompt))",
        "x = prompt[-500:]",
        "lines = prompt.splitlines()\nprint(lines[:20])",
        "print(f'{len(prompt)} chars')",
    ],
)
def test_peek(code: str) -> None:
    assert labels(code) == {"peek"}


@pytest.mark.parametrize(
    "code",
    [
        "import re\nhits = re.findall(r'roll', prompt)",
        "import re as regex\nn = len(regex.findall('d20', prompt))",
        "from re import finditer\nm = list(finditer('x', prompt))",
        "i = prompt.find('Episode 3')",
        "c = prompt.count('roll')",
        "hits = [l for l in prompt.split('\\n') if 'roll' in l]",
        "n = 0\nfor line in prompt.splitlines():\n    if line.startswith('DM'):\n        n += 1",
        "found = 'Vex' in prompt",
    ],
)
def test_grep(code: str) -> None:
    assert labels(code) == {"grep"}


def test_regex_over_worker_replies_is_not_grep() -> None:
    cells = ["import re\nreplies = sub_call_batch(chunks, 'count')\n"
             "counts = [int(re.search(r'\\d+', r).group()) for r in replies]\ntotal = sum(counts)"]
    assert classify_cells(cells).labels == ("map-reduce", "chunk-map")


def test_replay_controller_of_the_cpu_profile() -> None:
    import yaml
    from importlib.resources import files

    replay = yaml.safe_load((files("configs") / "replays" / "chunk-count.yaml").read_text())
    from rlm_rig.controller.parsing import parse_turn

    codes = [parse_turn(r).code for r in replay["responses"]]
    res = classify_cells([c for c in codes if c is not None])
    assert res.primary == "map-reduce"
    assert set(res.labels) == {"map-reduce", "chunk-map", "grep", "peek"}


def test_compiled_pattern_counts_as_grep() -> None:
    assert labels("import re\npat = re.compile('roll')", "m = pat.findall(prompt)") == {"grep"}


def test_single_subcall() -> None:
    res = classify_cells(["ans = sub_call(prompt[10000:20000], 'How many rolls?')"])
    assert res.primary == "single-subcall"
    assert res.labels == ("single-subcall",)  # prompt[10000:20000] is the chunk, not a peek


@pytest.mark.parametrize(
    "code",
    [
        "chunks = [prompt[i:i+5000] for i in range(0, len(prompt), 5000)]\nanswers = [sub_call(c, 'q') for c in chunks]",
        "chunks = [prompt[i:i+5000] for i in range(0, len(prompt), 5000)]\nout = []\nfor c in chunks:\n    out.append(sub_call(c, 'q'))",
        "answers = sub_call_batch([prompt[:100], prompt[100:200]], 'q')",
        "answers = list(map(lambda c: sub_call(c, 'q'), chunks))",
        "from concurrent.futures import ThreadPoolExecutor\nwith ThreadPoolExecutor(4) as ex:\n    futs = [ex.submit(sub_call, c, 'q') for c in chunks]",
    ],
)
def test_chunk_map_without_aggregation(code: str) -> None:
    res = classify_cells([code])
    assert "chunk-map" in res.labels
    assert "map-reduce" not in res.labels
    assert "single-subcall" not in res.labels


@pytest.mark.parametrize(
    "cells",
    [
        # numeric aggregation in the same cell
        ["chunks = [prompt[i:i+5000] for i in range(0, len(prompt), 5000)]\n"
         "total = sum(int(sub_call(c, 'count rolls')) for c in chunks)"],
        # += over sub_call answers inside the loop
        ["total = 0\nfor i in range(0, len(prompt), 4000):\n    total += int(sub_call(prompt[i:i+4000], 'count'))"],
        # map in one cell, Counter in a later one (REPL state carries over)
        ["answers = sub_call_batch(chunks, 'who rolled?')", "from collections import Counter\nc = Counter(answers)"],
        # an LM reduce over joined answers
        ["parts = [sub_call(c, 'list names') for c in chunks]", "final = sub_call('\\n'.join(parts), 'merge the lists')"],
        # counting in a loop over the answers
        ["res = sub_call_batch(chunks, 'yes or no?')\nk = 0\nfor r in res:\n    if 'yes' in r.lower():\n        k += 1"],
        # a helper function wrapping sub_call, called in a comprehension, then max()
        ["def ask(c):\n    return sub_call(c, 'highest roll?')", "vals = [int(ask(c)) for c in chunks]\nprint(max(vals))"],
    ],
)
def test_map_reduce(cells: list[str]) -> None:
    res = classify_cells(cells)
    assert res.primary == "map-reduce", res
    assert "chunk-map" in res.labels


def test_multi_label_and_primary_order() -> None:
    cells = [
        "print(prompt[:1000])\nprint(len(prompt))",
        "import re\nidx = [m.start() for m in re.finditer('Episode', prompt)]",
        "chunks = [prompt[a:b] for a, b in zip(idx, idx[1:])]\nans = sub_call_batch(chunks, 'count rolls')",
        "FINAL(sum(int(a) for a in ans))",
    ]
    res = classify_cells(cells)
    assert res.labels == ("map-reduce", "chunk-map", "grep", "peek")
    assert res.primary == "map-reduce"


def test_unparseable_cell_is_labelled_and_others_still_read() -> None:
    res = classify_cells(["print(prompt[:100]", "print(prompt[:100])"])
    assert set(res.labels) == {"peek", "unparseable"}
    assert res.primary == "peek"
    only_bad = classify_cells(["def broken(:\n  pass"])
    assert only_bad.labels == ("unparseable",) and only_bad.primary == "unparseable"


def test_no_code_and_other() -> None:
    assert classify_cells([]).primary == "no-code"
    assert classify_cells(["x = 1 + 1"]).primary == "other"


def test_precedence_lists_every_label() -> None:
    assert set(STRATEGY_PRECEDENCE) == {
        "nested", "map-reduce", "chunk-map", "single-subcall", "grep", "peek", "other", "unparseable", "no-code"
    }


def _traj(cells: list[str], nested: bool = False, turns: int = 1) -> Trajectory:
    now = datetime.now(timezone.utc).isoformat()
    t = Trajectory(run_id="r", question="q", doc_chars=100, doc_sha256="0" * 64, config={}, config_hash="h",
                   models={}, versions={}, started_at=now)
    t.turns = [ControllerTurn(index=i, messages_in=[], response="") for i in range(turns)]
    t.cells = [CellRecord(index=i, turn=i, code=c) for i, c in enumerate(cells)]
    if nested:
        child = Trajectory(run_id="c", question="q", doc_chars=10, doc_sha256="0" * 64, config={}, config_hash="h",
                           models={}, versions={}, started_at=now, depth=1)
        t.sub_calls = [SubCallRecord(id=0, cell=0, depth=1, chunk_chars=10, instruction="i",
                                     nested_trajectory=child.model_dump(mode="json"))]
    return t


def test_classify_trajectory() -> None:
    assert classify_trajectory(None).primary == NO_CONTROLLER
    assert classify_trajectory(_traj([], turns=0)).primary == NO_CONTROLLER  # a baseline: sub_calls only
    assert classify_trajectory(_traj([], turns=1)).primary == "no-code"
    res = classify_trajectory(_traj(["a = sub_call(prompt[:10], 'q')"], nested=True))
    assert res.primary == "nested" and "single-subcall" in res.labels
