"""The viewer in a real browser (system Chromium driven by Playwright) on a REAL eval run: the cpu-tiny
profile with the tiny vLLM worker and a replay controller whose first cell prints hostile HTML, plus
real interp outputs (`rlm-rig interp capture` and `patch` on that run, nnsight on the tiny model).

Click-through: run -> samples -> a failing sample -> a span on the document map -> its sub_call ->
its interp page -> back. Screenshots of each page land in a temporary folder; RLM_RIG_SCREENSHOTS=docs (a folder,
relative to the repository) writes them there instead, to refresh docs/view_*.png: a test run never edits tracked
files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlm_rig.configs.load import load_config
from rlm_rig.records.trajectory import read_jsonl
from rlm_rig.records.runlog import EvalSpec
from rlm_rig.experiments.runs.evaluate import run_eval

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
HOSTILE = "<script>alert(1)</script>"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    pw = pytest.importorskip("playwright.sync_api", reason="the `playwright` package (test extra) is not installed")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no system Chromium: scripts/install.sh installs it with apt-get when run as root")
    with pw.sync_playwright() as p:
        # Playwright gives each launch a fresh, temporary --user-data-dir of its own
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def eval_run(vllm_server, tmp_path_factory):
    """A real RLM eval of 3 toy OOLONG-real examples; the replay's first cell prints a <script> tag."""
    root = tmp_path_factory.mktemp("view")
    d = yaml.safe_load((REPO / "configs" / "replays" / "chunk-count.yaml").read_text())
    d["responses"][0] = d["responses"][0].replace("import re\n", f"import re\nprint({HOSTILE!r})\n", 1)
    replay = root / "hostile-replay.yaml"
    replay.write_text(yaml.safe_dump(d, sort_keys=False))
    cfg = load_config("cpu-tiny", [f"worker.server.url={vllm_server}", "worker.served_name=tiny"])
    rd = root / "run"
    res = run_eval(cfg, EvalSpec(dataset="oolong-real", source="toy", limit=3, controller_replay=str(replay)), rd,
                   show_progress=False)
    assert res["status"] == "complete"
    return rd


def _cli(*args: str) -> str:
    p = subprocess.run([sys.executable, "-m", "rlm_rig.experiments.cli", *args], cwd=REPO, capture_output=True, text=True,
                       timeout=1200, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p.stdout


@pytest.fixture(scope="module")
def site(eval_run):
    """interp capture + patch on the run (tiny model, real nnsight), then `rlm-rig view`."""
    prof = eval_run.parent / "interp-profile.yaml"
    prof.write_text("worker:\n  model: tiny\n  dtype: float32\ninterp:\n  device: cpu\n  n_pairs: 2\n"
                    "  components: [resid]\n  n_boot: 100\n  capture_positions: [last]\n  max_new_tokens: 8\n")
    _cli("interp", "capture", str(eval_run), "--config", str(prof), "--limit", "4")
    _cli("interp", "patch", str(eval_run), "--config", str(prof), "--limit", "8")
    out = _cli("view", str(eval_run))
    index = eval_run / "view" / "index.html"
    assert f"site: {index}" in out and index.exists()
    return index


def _shot(page, name: str) -> None:
    import tempfile

    to = os.environ.get("RLM_RIG_SCREENSHOTS")
    folder = REPO / to if to else Path(tempfile.gettempdir()) / "rlm-rig-view-shots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"view_{name}.png"), full_page=False)


def test_click_through(browser, site, eval_run):
    rows = read_jsonl(eval_run / "samples.jsonl")
    failing = [r for r in rows if r["score"] < 1]
    assert failing, "the tiny random worker should fail at least one example"
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    dialogs, errors = [], []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("pageerror", lambda e: errors.append(str(e)))

    # run page: spec and scores with CIs, per question type and length bin
    page.goto(site.as_uri())
    assert page.locator("h2", has_text="run (rlm, depth").count() == 1
    assert "cpu-tiny" in page.locator("table.kv").first.inner_text()
    assert "95% CI" in page.inner_text("main") and "singledoc_rolls" in page.inner_text("main")
    _shot(page, "run")

    # samples: every row, then failures only
    page.click("a.button:has-text('samples')")
    page.wait_for_selector("#samples tbody tr")
    assert page.locator("#samples tbody tr").count() == len(rows)
    page.check("#f-failures")
    assert page.locator("#samples tbody tr").count() == len(failing)
    assert page.inner_text("#count") == f"{len(failing)} of {len(rows)} samples"
    _shot(page, "samples")

    # a failing sample that interp studied: facts, the printed <script> shown as text, no script ran
    import pandas as pd

    studied_stems = set(pd.read_parquet(eval_run / "interp" / "capture" / "faithfulness.parquet")["sample"])
    fid = next(r["id"] for r in failing if Path(r["trajectory"]).stem in studied_stems)
    page.click(f"#samples tbody tr td.c-id a:text-is('{fid}')")
    page.wait_for_selector(".docmap")
    assert fid in page.inner_text("h1")
    out = page.locator(".cell pre.output").first.inner_text()
    assert HOSTILE in out
    assert page.locator("script").count() == 1 and not dialogs
    assert page.evaluate("document.querySelectorAll('main script').length") == 0
    row = next(r for r in rows if r["id"] == fid)
    facts = page.locator("section.facts").inner_text()
    assert row["gold"] in facts and "failure class" in facts and "official score" in facts
    spans = page.locator(".docmap a.span")
    traj = json.loads((eval_run / row["trajectory"]).read_text())
    placed = [s for s in traj["sub_calls"] if s["chunk_start"] is not None]
    assert spans.count() == len(placed) >= 2
    assert page.locator(".docmap .gap").count() >= 1  # the header before the first episode is never read
    _shot(page, "sample")

    # a span on the map opens its sub_call (choose one interp studied)
    studied = page.locator("details.subcall:has(a.interp-link)")
    assert studied.count() >= 1
    anchor = studied.first.get_attribute("id")
    sc_id = int(anchor.split("-")[-1])
    page.wait_for_load_state("load")
    page.click(f".docmap a.span[data-anchor='{anchor}']")
    assert page.evaluate("location.hash") == f"#{anchor}"
    sc = page.locator(f"details#{anchor}")
    assert sc.evaluate("el => el.open") and "focus" in (sc.get_attribute("class") or "")
    rec = next(s for s in traj["sub_calls"] if s["id"] == sc_id)
    assert f"sub_call {sc_id}" in sc.locator(":scope > summary").inner_text()
    assert rec["instruction"] in sc.inner_text() and f"{rec['chunk_start']}–{rec['chunk_end']}" in sc.inner_text()
    _shot(page, "subcall")

    # its interp page, and back
    sc.locator("a.interp-link").click()
    page.wait_for_selector("h1")
    stem = Path(row["trajectory"]).stem
    assert f"{stem}:{sc_id}" in page.inner_text("h1")
    body = page.inner_text("main")
    assert "Replay faithfulness" in body and rec["instruction"] in body
    _shot(page, "interp")
    page.click("#back-to-sample")
    page.wait_for_load_state("load")  # sample.js (end of body) has run: it opens the sub_call the hash names
    assert page.evaluate("location.hash") == f"#{anchor}"
    page.wait_for_function(f"document.getElementById('{anchor}').open", timeout=5000)
    page.goto((site.parent / "r0" / "interp" / "index.html").as_uri())
    assert page.locator("#studied tbody tr").count() >= 1
    assert "heatmap" in page.inner_text("main").lower() or page.locator(".plots img").count() >= 1
    _shot(page, "interp_index")
    # a patched sub_call: its pairs and a layer x position heatmap per pair
    pair = read_jsonl(eval_run / "interp" / "patch" / "pairs.jsonl")[0]
    page.click(f"#studied a:text-is('{pair['sample']}:{pair['sub_call']}')")
    page.wait_for_selector("table.heatmap")
    assert pair["corruption"] in page.inner_text("main")
    n_layers = len(json.loads((eval_run / "interp" / "patch" / "patch.json").read_text())["layers"])
    assert page.locator("table.heatmap").first.locator("thead th").count() == n_layers + 1
    _shot(page, "interp_patching")
    assert not errors and not dialogs


def test_export_rlm_jsonl(eval_run):
    """Each trajectory as the official RLM logger writes it: metadata line, then one line per iteration."""
    _cli("export", str(eval_run), "--format", "rlm-jsonl")
    files = sorted((eval_run / "export" / "rlm-jsonl").glob("*.jsonl"))
    rows = read_jsonl(eval_run / "samples.jsonl")
    assert len(files) == len(rows)
    import re

    for f in files:
        assert re.fullmatch(r".+_\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}_[0-9a-f]{8}\.jsonl", f.name)
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        meta, its = lines[0], lines[1:]
        assert set(meta) == {"type", "timestamp", "root_model", "max_depth", "max_iterations", "backend",
                             "backend_kwargs", "environment_type", "environment_kwargs", "other_backends"}
        assert meta["type"] == "metadata" and meta["backend"] == "replay" and isinstance(meta["max_depth"], int)
        sid = f.name.rsplit("_", 3)[0]
        traj = json.loads((eval_run / next(r["trajectory"] for r in rows if r["id"] == sid)).read_text())
        assert [i["iteration"] for i in its] == list(range(1, len(traj["turns"]) + 1))
        for it, turn in zip(its, traj["turns"]):
            assert set(it) == {"type", "iteration", "timestamp", "prompt", "response", "code_blocks", "final_answer",
                               "iteration_time"}
            assert it["type"] == "iteration" and it["response"] == turn["response"]
            assert it["prompt"][-len(turn["messages_in"]):] == turn["messages_in"]
            for cb in it["code_blocks"]:
                assert set(cb) == {"code", "result"}
                assert set(cb["result"]) == {"stdout", "stderr", "locals", "execution_time", "rlm_calls", "final_answer"}
                for call in cb["result"]["rlm_calls"]:
                    assert {"root_model", "prompt", "response", "usage_summary", "execution_time"} <= set(call)
                    u = call["usage_summary"]["model_usage_summaries"][call["root_model"]]
                    assert set(u) == {"total_calls", "total_input_tokens", "total_output_tokens"}
        n_calls = sum(len(cb["result"]["rlm_calls"]) for it in its for cb in it["code_blocks"])
        assert n_calls == len(traj["sub_calls"])
        assert its[0]["code_blocks"][0]["result"]["stdout"].startswith(HOSTILE)
        assert its[-1]["final_answer"] == traj["final_answer"]
