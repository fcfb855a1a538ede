"""The static viewer without a browser or a server: pages exist, model text is escaped, the document
map places spans and gaps, absent fields are skipped, the rlm-jsonl export has the official fields."""
from __future__ import annotations

import json
import re
from pathlib import Path


from rlm_rig.experiments.view.site import build_site
from rlm_rig.experiments.view.docmap import build_docmap
from demo_run import make_demo_run
from conftest import interruptible

HOSTILE = "<script>alert(1)</script>"


def _hostile_run(root: Path) -> Path:
    """A demo run whose model-written text (answer, sub_call reply, cell output, code) is hostile HTML."""
    rd = make_demo_run(root / "run", n_samples=3)
    rows = [json.loads(x) for x in (rd / "samples.jsonl").read_text().splitlines()]
    rows[0]["answer"] = HOSTILE
    (rd / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tp = rd / rows[0]["trajectory"]
    t = json.loads(tp.read_text())
    t["sub_calls"][0]["response"] = HOSTILE
    t["turns"] = [{"index": 0, "messages_in": [{"role": "user", "content": HOSTILE}],
                   "response": f"look\n```repl\nprint('{HOSTILE}')\n```\n"}]
    t["cells"] = [{"index": 0, "turn": 0, "code": f"print('{HOSTILE}')", "stdout": HOSTILE + "\n",
                   "error": "</pre><img src=x onerror=alert(2)>", "notices": [HOSTILE]}]
    tp.write_text(json.dumps(t))
    return rd


def test_site_escapes_model_text(tmp_path):
    rd = _hostile_run(tmp_path)
    res = build_site([rd], tmp_path / "site", report=False)
    assert res.index.exists() and res.n_samples == 3
    page = (tmp_path / "site" / "r0" / "sample" / "demo-000.html").read_text()
    assert HOSTILE not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # the only <script> tags are the viewer's own
    assert re.findall(r"<script[^>]*>", page) == ['<script src="../../static/sample.js">']
    samples = (tmp_path / "site" / "r0" / "samples.html").read_text()
    assert HOSTILE not in samples and "\\u003cscript\\u003e" in samples  # JSON in a script block stays inert
    data = re.search(r'<script type="application/json" id="samples-data">(.*?)</script>', samples, re.S).group(1)
    rows = json.loads(data)["rows"]
    assert [r[0] for r in rows] == ["demo-000", "demo-001", "demo-002"] and rows[0][5] == HOSTILE


def test_docmap_spans_lanes_and_gaps():
    t = {"doc_chars": 1000, "sub_calls": [
        {"id": 0, "cell": 0, "chunk_start": 100, "chunk_end": 400},
        {"id": 1, "cell": 0, "chunk_start": 300, "chunk_end": 500},  # overlaps 0: second lane
        {"id": 2, "cell": 1, "chunk_start": 700, "chunk_end": 800},
        {"id": 3, "cell": 1, "chunk_start": None, "chunk_end": None},
    ]}
    dm = build_docmap(t, lambda i: f"sc-{i}", lambda i: "wrong" if i == 2 else None)
    assert [(s.sub_call, s.lane) for s in dm.spans] == [(0, 0), (1, 1), (2, 0)]
    assert [(g[0], g[1]) for g in dm.gaps] == [(0, 100), (500, 700), (800, 1000)]
    assert dm.covered == 500 and dm.unplaced == [3] and dm.lanes == 2
    assert dm.spans[2].verdict == "wrong" and dm.spans[2].colour == "#d62728"
    assert dm.spans[0].colour != dm.spans[2].colour or dm.spans[0].verdict is None


def test_optional_fields_show_when_present(tmp_path):
    """Fields other branches add (task instructions, failure class, token ids, logprobs) appear when set."""
    rd = make_demo_run(tmp_path / "run", n_samples=1)
    row = json.loads((rd / "samples.jsonl").read_text())
    row["extra"] = {"task_instructions": "Count the rolls, answer in \\boxed{}."}
    (rd / "samples.jsonl").write_text(json.dumps(row) + "\n")
    tp = rd / row["trajectory"]
    t = json.loads(tp.read_text())
    t["sub_calls"][0]["token_ids"] = [11, 22, 33]
    t["sub_calls"][0]["logprobs"] = [-0.5, -1.25, -0.01]
    tp.write_text(json.dumps(t))
    build_site([rd], tmp_path / "site", report=False)
    page = (tmp_path / "site" / "r0" / "sample" / "demo-000.html").read_text()
    assert "Count the rolls" in page and "11 22 33" in page and "-1.25" in page
    assert "token ids (3)" in page


def test_view_cli_bad_input(tmp_path):
    from typer.testing import CliRunner

    from rlm_rig.experiments.cli import app

    r = CliRunner().invoke(app, ["view", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "is not a folder" in r.output
    r = CliRunner().invoke(app, ["export", str(tmp_path), "--format", "csv"])
    assert r.exit_code == 2 and "--format 'csv' is not known" in r.output


def test_serve_is_loopback_only_and_serves_the_site(tmp_path):
    """`rlm-rig view --serve`: a real server on 127.0.0.1 that serves the written site."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import httpx

    rd = make_demo_run(tmp_path / "run", n_samples=2)
    repo = Path(__file__).resolve().parents[2]
    p = subprocess.Popen([sys.executable, "-m", "rlm_rig.experiments.cli", "view", str(rd), "--no-report", "--serve"],
                         cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                             preexec_fn=interruptible)
    try:
        url = None
        deadline = time.time() + 120
        while time.time() < deadline and url is None:
            line = p.stdout.readline()
            assert line or p.poll() is None, p.stderr.read()[-2000:]
            if line.startswith("serving: "):
                url = line.split()[1]
        assert url is not None and url.startswith("http://127.0.0.1:")
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        assert httpx.get(url.replace("index.html", "r0/samples.html"), timeout=10).status_code == 200
    finally:
        os.killpg(p.pid, signal.SIGINT)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:  # fail, but leave no server behind
            os.killpg(p.pid, signal.SIGKILL)
            raise


def test_a_fork_folder_shows_the_fork_beside_its_original(tmp_path):
    """A fork folder (trajectory + ForkRecord) gets a page with every later step side by side, changed ones marked,
    model text escaped, and links from the index and the sample page."""
    from rlm_rig.records.fork import ForkRecord, step_changes
    from rlm_rig.records.runlog import RunFolder
    from rlm_rig.records.trajectory import Trajectory

    rd = make_demo_run(tmp_path / "run", n_samples=1)
    sid, opath = next(RunFolder(rd).trajectories())
    orig = Trajectory.load(opath)
    forked = orig.model_copy(deep=True)
    forked.sub_calls[0].response, forked.sub_calls[0].source = HOSTILE, "fork"
    forked.final_answer = "\\boxed{99}"
    fdir = tmp_path / "fork"
    folder = RunFolder(fdir)
    forked.save(folder.ask_trajectory_path)
    turn = orig.cells[orig.sub_calls[0].cell].turn if orig.cells else 0
    ForkRecord(original_run=str(rd), sample=sid, original_trajectory=str(opath), at=0, fork_turn=turn,
               controller="replay", reply_original=orig.sub_calls[0].response, reply_fork=HOSTILE,
               answer_original=orig.final_answer, answer_fork=forked.final_answer, answer_changed=True,
               steps=step_changes(orig, forked, at=0, fork_turn=turn)).save(folder.fork_path)
    build_site([fdir], tmp_path / "site", report=False)
    page = (tmp_path / "site" / "r0" / "fork.html").read_text()
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "sub_call:0" in page and "\\boxed{99}" in page and (orig.final_answer or "") in page
    rows = re.findall(r'<tr class="(changed|same)"><td>(\w+) (\d+)</td>', page)
    assert ("changed", "sub_call", "0") in rows and all(c == "same" for c, k, i in rows if k == "sub_call" and i != "0")
    assert 'href="r0/fork.html"' in (tmp_path / "site" / "index.html").read_text()
    assert 'href="../fork.html"' in (tmp_path / "site" / "r0" / "sample" / "trajectory.html").read_text()
