"""OOLONG-real / OOLONG-synth loaders: bundled samples, local files, schema errors, streaming
filters, and the Hugging Face streaming path up to the hub boundary (a local file)."""
from __future__ import annotations

import gzip
import hashlib
import json

import pytest

from rlm_rig.experiments.datasets.bundled import DATA_DIR
from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.filters import ExampleFilter
from rlm_rig.experiments.datasets.rows import SchemaError
from rlm_rig.experiments.datasets.registry import load_examples
from rlm_rig.experiments.datasets.filters import apply_filter, count_tokens, question_type_matches, reservoir_sample
from rlm_rig.experiments.datasets.oolong_real.load import load_oolong_real
from rlm_rig.experiments.datasets.oolong_synth.load import iter_oolong_synth_rows, load_oolong_synth
from rlm_rig.experiments.datasets.oolong_synth.make_sample import build_synth_sample_rows
from rlm_rig.experiments.datasets.oolong_real.score import score_oolong_real
from rlm_rig.experiments.datasets.oolong_synth.score import score_oolong_synth

TOY = DATA_DIR / "oolong-real" / "toy.jsonl"
MINI = DATA_DIR / "oolong-real" / "dnd-mini.jsonl.gz"
SYNTH = DATA_DIR / "oolong-synth" / "trec_coarse-mini.jsonl"


def _toy_rows() -> list[dict]:
    return [json.loads(l) for l in TOY.read_text().splitlines()]


# ----------------------------------------------------------------------------- bundled data

def test_bundled_files_match_their_recorded_hashes():
    readme = (DATA_DIR / "README.md").read_text()
    for path in (TOY, MINI, SYNTH):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest in readme, f"{path.name} changed; update experiments/data/README.md"
    assert (DATA_DIR / "oolong-real" / "SOURCE_README.md").read_text().count("CC BY-SA 4.0") >= 1
    total = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    assert total < 3_000_000


def test_toy_examples_map_fields():
    rows = _toy_rows()
    exs = list(load_oolong_real("toy"))
    assert len(exs) == 13 == len(rows)
    ex, row = exs[0], rows[0]
    assert isinstance(ex, Example)
    assert (ex.id, ex.dataset, ex.gold, ex.question, ex.question_type, ex.episodes) == (
        row["id"], "oolong-real", row["answer"], row["question"], "singledoc_rolls", [1])
    assert ex.context == row["context_window_text"] and ex.answer_type is None
    assert ex.prompt == row["context_window_text"] + "\n" + row["question"]
    assert ex.meta["context_window_id"] == row["context_window_id"] and ex.meta["campaign"] == "campaign1"
    assert "context" not in ex.to_dict(with_context=False)


def test_mini_sample_golds_score_perfectly_when_boxed():
    exs = list(load_examples("oolong-real", "bundled:mini"))
    assert len(exs) == 8
    assert sorted({tuple(e.episodes) for e in exs}) == [(1,), (1, 2)]
    for ex in exs:  # each gold, boxed, is a perfect official answer
        assert score_oolong_real("\\boxed{" + ex.gold + "}", ex.gold).score == 1.0


def test_unknown_bundled_name_is_a_clear_error():
    with pytest.raises(ValueError, match="no bundled sample 'huge'"):
        list(load_oolong_real("bundled:huge"))


# ----------------------------------------------------------------------------- local files

def test_local_gz_and_hub_like_folder(tmp_path):
    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wt") as fh:
        fh.write(TOY.read_text())
    assert [e.id for e in load_oolong_real(gz)] == [r["id"] for r in _toy_rows()]
    folder = tmp_path / "repo"
    (folder / "dnd").mkdir(parents=True)
    (folder / "dnd" / "validation.jsonl").write_text(TOY.read_text())
    assert len(list(load_oolong_real(folder, split="validation"))) == 13
    with pytest.raises(FileNotFoundError, match="test.jsonl"):
        load_oolong_real(folder, split="test")


def test_missing_source_and_bad_split():
    with pytest.raises(FileNotFoundError):
        load_oolong_real("does/not/exist.jsonl")
    with pytest.raises(ValueError, match="split must be one of"):
        load_oolong_real("oolongbench/oolong-real", split="train")


@pytest.mark.parametrize("field", ["episodes", "answer", "context_window_text", "campaign"])
def test_schema_error_names_file_line_and_field(tmp_path, field):
    rows = _toy_rows()[:3]
    del rows[1][field]
    path = tmp_path / "broken.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    it = load_oolong_real(path)
    next(it)  # the first row is fine
    with pytest.raises(SchemaError, match=rf"broken\.jsonl:2: .*missing field\(s\) '{field}'"):
        next(it)


@pytest.mark.parametrize(
    "field, value, message",
    [("episodes", "1", "'episodes' should be list"), ("episodes", [1, "2"], "list of ints"), ("answer", 12, "'answer' should be str")],
)
def test_schema_error_on_wrong_types(tmp_path, field, value, message):
    row = _toy_rows()[0]
    row[field] = value
    path = tmp_path / "typed.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SchemaError, match=message):
        list(load_oolong_real(path))


def test_invalid_json_line_is_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(TOY.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(SchemaError, match=r"bad\.jsonl:2: not valid JSON"):
        list(load_oolong_real(path))


# ----------------------------------------------------------------------------- filters

def test_question_type_and_episode_filters():
    assert question_type_matches("multidoc_rolls", ["multidoc"])
    assert question_type_matches("singledoc_spells", ["spells"])
    assert not question_type_matches("singledoc_rolls", ["multidoc", "spells"])
    multi = list(load_oolong_real("mini", filters=ExampleFilter(question_types=["multidoc_rolls"])))
    assert [e.gold for e in multi][0] == "199" and len(multi) == 2
    assert len(list(load_oolong_real("mini", filters=ExampleFilter(min_episodes=2)))) == 2
    assert len(list(load_oolong_real("mini", filters=ExampleFilter(max_episodes=1)))) == 6
    assert len(list(load_oolong_real("mini", filters=ExampleFilter(min_episodes=3)))) == 0
    with pytest.raises(ValueError, match="min_episodes"):
        ExampleFilter(min_episodes=3, max_episodes=2)


def test_context_char_and_token_caps():
    # window {1} has 181,990 chars, window {1,2} 369,262
    assert len(list(load_oolong_real("mini", filters=ExampleFilter(max_context_chars=200_000)))) == 6
    assert len(list(load_oolong_real("mini", filters=ExampleFilter(max_context_chars=1000)))) == 0
    calls = []

    def whitespace_tokens(text: str) -> list[str]:
        calls.append(len(text))
        return text.split()

    n_words = len(next(iter(load_oolong_real("toy"))).context.split())
    kept = list(load_oolong_real("toy", filters=ExampleFilter(max_context_tokens=n_words, tokenizer=whitespace_tokens)))
    assert len(kept) == 13 and kept[0].meta["context_tokens"] == n_words
    assert len(calls) == 1  # 13 rows share one document: tokenized once
    assert list(load_oolong_real("toy", filters=ExampleFilter(max_context_tokens=n_words - 1, tokenizer=lambda t: len(t.split())))) == []
    with pytest.raises(ValueError, match="tokenizer"):
        ExampleFilter(max_context_tokens=10)


def _numbered(n: int) -> list[Example]:
    return [Example(id=str(i), dataset="x", context="c" * i, question="q", gold="1") for i in range(n)]


def test_seeded_sample_is_reproducible_uniform_and_ordered():
    pool = _numbered(200)
    a = [e.id for e in apply_filter(pool, ExampleFilter(sample=10, seed=1))]
    b = [e.id for e in apply_filter(pool, ExampleFilter(sample=10, seed=1))]
    c = [e.id for e in apply_filter(pool, ExampleFilter(sample=10, seed=2))]
    assert a == b and a != c and len(set(a)) == 10
    assert [int(i) for i in a] == sorted(int(i) for i in a)  # stream order kept
    assert [e.id for e in reservoir_sample(pool[:5], 10, 0)] == ["0", "1", "2", "3", "4"]
    # every item can be drawn: over many seeds, all 20 positions of a short stream appear
    seen = {e.id for s in range(200) for e in reservoir_sample(_numbered(20), 2, s)}
    assert seen == {str(i) for i in range(20)}
    assert [e.id for e in apply_filter(pool, ExampleFilter(sample=10, seed=1, limit=3))] == a[:3]


def test_limit_stops_the_stream_early():
    def stream():
        yield from _numbered(3)
        raise AssertionError("read past the limit")

    assert [e.id for e in apply_filter(stream(), ExampleFilter(limit=3))] == ["0", "1", "2"]
    assert list(apply_filter(stream(), ExampleFilter(limit=0))) == []


def test_ids_filter_and_bad_values():
    assert [e.id for e in apply_filter(_numbered(5), ExampleFilter(ids={"3", 1}))] == ["1", "3"]
    with pytest.raises(ValueError, match="limit"):
        ExampleFilter(limit=-1)


def test_episode_filter_on_dataset_without_episodes():
    with pytest.raises(ValueError, match="episode filters"):
        list(apply_filter(_numbered(2), ExampleFilter(min_episodes=1)))


# ----------------------------------------------------------------------------- hub streaming boundary

def test_hf_streaming_path_on_a_local_json_file():
    pytest.importorskip("datasets")
    exs = list(load_oolong_real("hf:json", config=None, split="train", data_files=str(MINI),
                                filters=ExampleFilter(question_types=["multidoc"], limit=1)))
    assert len(exs) == 1 and exs[0].episodes == [1, 2] and exs[0].gold == "199"
    assert exs[0].meta["where"].startswith("hf:json[default/train]#")


def test_hf_streaming_schema_error(tmp_path):
    pytest.importorskip("datasets")
    row = _toy_rows()[0]
    del row["campaign"]
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SchemaError, match=r"hf:json\[default/train\]#0: .*'campaign'"):
        list(load_oolong_real("hf:json", config=None, split="train", data_files=str(path)))


# ----------------------------------------------------------------------------- oolong-synth

def test_synth_sample_regenerates_byte_for_byte():
    text = "".join(json.dumps(r) + "\n" for r in build_synth_sample_rows(0))
    assert text == SYNTH.read_text()


def test_synth_loader_fields_and_context_len_filter():
    all_rows = list(load_oolong_synth("mini", context_len=None))
    assert len(all_rows) == 15
    short = list(load_oolong_synth("mini", context_len=1024))
    assert len(short) == 8 and {e.meta["context_len"] for e in short} == {1024}
    ex = short[0]
    assert ex.dataset == "oolong-synth" and ex.answer_type.startswith("ANSWER_TYPE.")
    assert ex.question_type.startswith("TASK_TYPE.") and ex.episodes is None and isinstance(ex.id, str)
    assert "Label:" not in ex.context  # the labelled copy is never used
    assert list(load_oolong_synth("mini", subset="spam")) == []
    nums = list(load_examples("synth", "mini", filters=ExampleFilter(answer_types=["ANSWER_TYPE.NUMERIC"])))
    assert len(nums) == 4


def test_synth_golds_agree_with_hidden_labels():
    """The generator's golds are what the labelled text says (so the sample is a real check)."""
    for row in build_synth_sample_rows(0):
        labels = [ln.rsplit("|| Label: ", 1)[1] for ln in row["context_window_text_with_labels"].splitlines() if "|| Label: " in ln]
        if row["answer_type"] == "ANSWER_TYPE.NUMERIC":
            label = row["question"].split("label '")[1].split("'")[0]
            assert row["answer"] == repr([labels.count(label)])
        if row["task"] == "TASK_TYPE.MOST_FREQ" and row["answer_type"] == "ANSWER_TYPE.LABEL":
            top = max(set(labels), key=labels.count)
            assert row["answer"] == repr([top])
        gold_first = row["answer"][1:-1].split(", '")[0].strip("'")
        answer = {"ANSWER_TYPE.DATE": "Date: " + row["answer"][15:-2].replace(", ", "-"),
                  "ANSWER_TYPE.COMPARISON": "Answer: x is " + gold_first + " y"}.get(row["answer_type"], "Answer: " + gold_first)
        assert score_oolong_synth(answer, row["answer"], row["answer_type"]).score == 1.0, row["answer"]


def test_synth_schema_error(tmp_path):
    row = build_synth_sample_rows(0)[0]
    del row["answer_type"]
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(SchemaError, match=r"s\.jsonl:1: oolong-synth row is missing field\(s\) 'answer_type'"):
        list(load_oolong_synth(path))


def test_synth_parquet_local_and_streamed(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "test-00000.parquet"
    pq.write_table(pa.Table.from_pylist(build_synth_sample_rows(0)), path, row_group_size=4)
    local = list(load_oolong_synth(path, context_len=2048))
    assert len(local) == 7
    pytest.importorskip("datasets")
    rows = list(iter_oolong_synth_rows("hf:parquet", split="train", data_files=str(path), context_len=1024))
    assert len(rows) == 8
    assert all("context_window_text_with_labels" not in r for _, r in rows)  # column pruned while streaming


def test_count_tokens_accepts_counts_sequences_and_encodings():
    assert count_tokens(lambda t: 3, "a b c") == 3
    assert count_tokens(str.split, "a b c") == 3
    assert count_tokens(lambda t: {"input_ids": t.split(), "attention_mask": [1, 1, 1]}, "a b c") == 3
    with pytest.raises(TypeError, match="input_ids"):
        count_tokens(lambda t: {"ids": []}, "x")
