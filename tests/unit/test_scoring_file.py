"""`score_file`: the engine of `rlm-rig score` (rows in, rows + score/parsed out, mean back)."""
from __future__ import annotations

import gzip
import json

import pytest

from rlm_rig.experiments.datasets.scoring import canonical_dataset, score_file, score_output
from rlm_rig.experiments.datasets.scoring import score_example


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_file_oolong_real_to_file(tmp_path):
    src = _write(tmp_path / "in.jsonl", [
        {"id": "a", "gold": "85", "output": r"\boxed{85}"},
        {"id": "b", "gold": "85", "output": r"\boxed{84}"},
        {"id": "c", "gold": "12, 6, 5", "output": r"\boxed{12, 6}"},
        {"id": "d", "gold": "Damage", "output": None},
    ])
    out = tmp_path / "sub" / "out.jsonl"
    mean = score_file("oolong-real", src, out)
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b", "c", "d"]
    assert [r["score"] for r in rows] == pytest.approx([1.0, 0.75, 2 / 3, 0.0])
    assert rows[2]["parsed"] == ["12", "6"] and rows[3]["parsed"] is None
    assert all("lenient_score" in r for r in rows)
    assert mean == pytest.approx((1 + 0.75 + 2 / 3) / 4)


def test_score_file_stdout_and_gz(tmp_path, capsys):
    src = tmp_path / "in.jsonl.gz"
    with gzip.open(src, "wt") as fh:
        fh.write(json.dumps({"gold": "1234567", "output": "it is 1234567"}) + "\n\n")
    mean = score_file("s-niah", src)
    printed = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert mean == 1.0 and printed[0]["score"] == 1.0


def test_score_file_synth_needs_answer_type(tmp_path):
    good = _write(tmp_path / "g.jsonl", [
        {"gold": "[12]", "output": "Answer: 11", "answer_type": "ANSWER_TYPE.NUMERIC"},
        {"gold": "[datetime.date(2023, 1, 5)]", "output": "Date: 01/05/2023", "answer_type": "ANSWER_TYPE.DATE"},
    ])
    out = tmp_path / "o.jsonl"
    assert score_file("synth", good, out) == pytest.approx((0.75 + 1.0) / 2)
    assert json.loads(out.read_text().splitlines()[1])["parsed"] == "01/05/2023"
    bad = _write(tmp_path / "b.jsonl", [{"gold": "[12]", "output": "Answer: 12"}])
    with pytest.raises(ValueError, match=r"b\.jsonl:1: missing field 'answer_type'"):
        score_file("oolong-synth", bad, tmp_path / "x.jsonl")


def test_score_file_per_row_dataset_and_sample_row_layout(tmp_path):
    # SampleRow layout: model output in `answer`, gold in `gold`, dataset per row
    src = _write(tmp_path / "s.jsonl", [
        {"dataset": "oolong-real", "gold": "85", "answer": r"\boxed{85}"},
        {"dataset": "sniah", "gold": "42", "answer": "no"},
    ])
    assert score_file(None, src, tmp_path / "o.jsonl") == 0.5


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"output": "x"}], r":1: missing field 'gold'"),
        ([{"gold": "1"}], r":1: missing field 'output'"),
        ([{"gold": "1", "output": 5}], r":1: 'output' must be a string or null"),
        ([{"gold": "1", "output": "x"}, ["not", "an", "object"]], r":2: expected a JSON object"),
    ],
)
def test_score_file_bad_rows_name_the_line(tmp_path, rows, message):
    src = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ValueError, match=message):
        score_file("oolong-real", src, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()  # nothing half-written


def test_score_file_bad_json_and_missing_file(tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"gold": "1", "output": "1"}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        score_file("oolong-real", src, tmp_path / "o.jsonl")
    with pytest.raises(FileNotFoundError):
        score_file("oolong-real", tmp_path / "nope.jsonl")


def test_empty_file_mean_is_zero(tmp_path):
    src = tmp_path / "e.jsonl"
    src.write_text("")
    assert score_file("oolong-real", src, tmp_path / "o.jsonl") == 0.0
    assert (tmp_path / "o.jsonl").read_text() == ""


def test_dataset_names():
    assert canonical_dataset("DND") == "oolong-real"
    assert canonical_dataset("oolongbench/oolong-synth") == "oolong-synth"
    assert canonical_dataset("niah") == "sniah"
    with pytest.raises(ValueError, match="unknown dataset"):
        canonical_dataset("ruler")
    with pytest.raises(ValueError, match="answer_type"):
        score_output("synth", "Answer: 1", "[1]")


def test_score_example_gives_official_and_lenient():
    from rlm_rig.experiments.datasets.oolong_real.load import load_oolong_real

    ex = next(iter(load_oolong_real("toy")))  # gold "1"
    strict, lenient = score_example(ex, "There was 1 roll.")
    assert (strict.score, lenient.score) == (0.0, 1.0)
    strict, lenient = score_example(ex, r"\boxed{2}")
    assert strict.score == lenient.score == 0.75
