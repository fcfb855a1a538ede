"""The REPL's normal behaviour: state, capture, tracebacks, sub_call round-trips, FINAL, big prompts."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from rlm_rig.repl.types import CellResult, SandboxLimits, SubCallReply, SubCallRequest
from rlm_rig.repl.sandbox import Sandbox

PROMPT = "The quick brown fox.\nJumps over the lazy dog.\n" * 10


class RecordingHandler:
    """A real handler (plain Python): runs a batch on a thread pool, like the controller's."""

    def __init__(self) -> None:
        self.batches: list[list[SubCallRequest]] = []
        self.pool = ThreadPoolExecutor(max_workers=8)

    def answer(self, req: SubCallRequest) -> SubCallReply:
        if req.instruction == "fail":
            return SubCallReply(error=f"worker refused chunk of {len(req.chunk)} chars")
        if req.instruction == "raise":
            raise RuntimeError("handler exploded")
        return SubCallReply(text=f"{req.instruction.upper()}[{req.chunk[:10]}]({len(req.chunk)})")

    def __call__(self, reqs: list[SubCallRequest]) -> list[SubCallReply]:
        self.batches.append(reqs)
        if any(r.instruction == "raise" for r in reqs):
            raise RuntimeError("handler exploded")
        return list(self.pool.map(self.answer, reqs))


@pytest.fixture(scope="module")
def handler():
    h = RecordingHandler()
    yield h
    h.pool.shutdown()


@pytest.fixture(scope="module")
def sb(handler):
    with Sandbox(PROMPT, handler=handler, limits=SandboxLimits(cell_timeout_s=20)) as box:
        yield box


def ok(result: CellResult) -> CellResult:
    assert result.error is None, result.error
    assert not result.restarted
    return result


def test_state_persists_across_cells(sb):
    ok(sb.run_cell("counter = 1\ndef bump():\n    global counter\n    counter += 1"))
    ok(sb.run_cell("bump(); bump()"))
    assert ok(sb.run_cell("print(counter)")).stdout == "3\n"


def test_prompt_is_loaded_and_not_echoed(sb):
    r = ok(sb.run_cell("n = len(prompt)"))
    assert r.stdout == "" and r.stderr == ""
    assert ok(sb.run_cell("print(n, prompt.count('fox'))")).stdout == f"{len(PROMPT)} 10\n"


def test_stdout_and_stderr_are_captured_separately(sb):
    r = ok(sb.run_cell("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n_ = sys.stdout.write('more')"))
    assert r.stdout == "to out\nmore"
    assert r.stderr == "to err\n"


def test_last_expression_is_displayed(sb):
    assert ok(sb.run_cell("x_disp = 21\nx_disp * 2")).stdout == "42\n"
    assert ok(sb.run_cell("None")).stdout == ""


def test_traceback_is_trimmed_to_model_frames(sb):
    r = sb.run_cell("def inner():\n    return 1 / 0\n\ninner()")
    assert not r.restarted
    assert r.error is not None
    assert r.error.startswith("Traceback (most recent call last):")
    assert 'File "<cell' in r.error and "return 1 / 0" in r.error
    assert r.error.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "_kernel" not in r.error and "repl/" not in r.error and "exec(" not in r.error


def test_syntax_error_is_reported_without_traceback(sb):
    r = sb.run_cell("def broken(:\n    pass")
    assert r.error is not None and "SyntaxError" in r.error
    assert "_kernel" not in r.error
    ok(sb.run_cell("print('still alive')"))


def test_error_keeps_output_printed_before_it(sb):
    r = sb.run_cell("print('before')\nraise ValueError('boom')")
    assert r.stdout == "before\n"
    assert "ValueError: boom" in r.error


def test_sub_call_round_trip(sb, handler):
    before = len(handler.batches)
    r = ok(sb.run_cell("ans = sub_call(prompt[:20], 'summarize')\nprint(ans)"))
    assert r.stdout == "SUMMARIZE[The quick ](20)\n"
    assert r.sub_calls == 1
    batch = handler.batches[before]
    assert len(batch) == 1 and batch[0].index_in_batch is None
    assert batch[0].chunk == PROMPT[:20] and batch[0].instruction == "summarize"


def test_sub_call_batch_both_forms(sb, handler):
    before = len(handler.batches)
    r = ok(sb.run_cell("a = sub_call_batch(['aa', 'bbb'], 'q')\n"
                       "b = sub_call_batch([('c', 'x'), ('dddd', 'y')])\nprint(a, b)"))
    assert r.stdout == "['Q[aa](2)', 'Q[bbb](3)'] ['X[c](1)', 'Y[dddd](4)']\n"
    assert r.sub_calls == 4
    assert [q.index_in_batch for q in handler.batches[before]] == [0, 1]
    assert ok(sb.run_cell("print(sub_call_batch([], 'q'))")).stdout == "[]\n"


def test_sub_call_batch_runs_concurrently_in_the_handler():
    """The parent hands the whole batch to the handler at once: a barrier of 4 only opens if
    all four requests are in flight together."""
    barrier = threading.Barrier(4, timeout=30)

    def handler(reqs):
        def one(req):
            barrier.wait()
            return SubCallReply(text=req.chunk)
        with ThreadPoolExecutor(max_workers=4) as pool:
            return list(pool.map(one, reqs))

    with Sandbox("p", handler=handler, limits=SandboxLimits(cell_timeout_s=60)) as box:
        r = box.run_cell("print(sub_call_batch(['1', '2', '3', '4'], 'echo'))")
    assert r.error is None, r.error
    assert r.stdout == "['1', '2', '3', '4']\n"


def test_sub_call_errors_raise_subcallerror(sb):
    r = ok(sb.run_cell("try:\n    sub_call('abc', 'fail')\nexcept SubCallError as e:\n    print('caught', e)"))
    assert r.stdout == "caught worker refused chunk of 3 chars\n"
    r = ok(sb.run_cell(
        "try:\n    sub_call_batch([('a', 'ok'), ('bb', 'fail'), ('c', 'ok')])\n"
        "except SubCallError as e:\n    print(e.results, sorted(e.errors))"))
    assert r.stdout == "['OK[a](1)', None, 'OK[c](1)'] [1]\n"
    r = sb.run_cell("sub_call('x', 'raise')")
    assert "SubCallError" in r.error and "handler exploded" in r.error
    assert not r.restarted


def test_sub_call_rejects_non_string_chunks(sb):
    r = sb.run_cell("sub_call(['not', 'a', 'str'], 'q')")
    assert "TypeError" in r.error and "chunk must be a str" in r.error
    r = sb.run_cell("sub_call_batch('just a string', 'q')")
    assert "TypeError" in r.error


def test_sub_call_from_model_threads(sb):
    r = ok(sb.run_cell(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(4) as ex:\n"
        "    outs = list(ex.map(lambda c: sub_call(c, 't'), ['a', 'b', 'c', 'd', 'e']))\nprint(outs)"))
    assert r.stdout == "['T[a](1)', 'T[b](1)', 'T[c](1)', 'T[d](1)', 'T[e](1)']\n"


def test_final_and_final_var(sb):
    r = ok(sb.run_cell("FINAL('the answer')\nprint('cell continues')"))
    assert r.final_answer == "the answer" and r.stdout == "cell continues\n"
    r = ok(sb.run_cell("result_list = [1, 2]\nFINAL_VAR('result_list')"))
    assert r.final_answer == "[1, 2]"
    r = ok(sb.run_cell("FINAL(42)"))
    assert r.final_answer == "42"
    assert ok(sb.run_cell("y_nf = 1")).final_answer is None


def test_final_var_of_missing_variable_is_a_cell_error(sb):
    r = sb.run_cell("FINAL_VAR('never_defined')")
    assert r.final_answer is None
    assert "NameError" in r.error and "never_defined" in r.error
    assert not r.restarted
    ok(sb.run_cell("print('next cell fine')"))


def test_input_does_not_block(sb):
    r = sb.run_cell("input('who? ')")
    assert "EOFError" in r.error


def test_isolation_report_is_observed(sb):
    iso = sb.isolation
    assert iso is not None
    assert iso.audit_hook and iso.env_scrubbed
    assert iso.rlimits["RLIMIT_AS"] == SandboxLimits().memory_mb * 1024 * 1024  # the one default (repl.types)
    assert iso.launcher in ("bwrap", "unshare", "none")
    if iso.launcher == "bwrap":
        assert iso.pid_namespace and iso.network_namespace and iso.readonly_root
    assert iso.launcher in iso.summary()


def test_five_million_char_prompt():
    big = ("lorem ipsum dolor sit amet " * 200_000)[:5_000_000] + "NEEDLE-\u00e9\u4e2d"
    with Sandbox(big, handler=lambda reqs: [], limits=SandboxLimits(cell_timeout_s=30)) as box:
        r = box.run_cell("print(len(prompt), prompt[-9:], prompt.count('lorem'))")
    assert r.error is None, r.error
    assert r.stdout == f"{len(big)} NEEDLE-\u00e9\u4e2d {big.count('lorem')}\n"
    assert len(r.stdout) < 100  # never echoed


def test_scratch_dir_is_cwd_and_persists_files(tmp_path, handler):
    scratch = tmp_path / "scratch"
    with Sandbox("p", handler=handler, scratch_dir=scratch) as box:
        r = box.run_cell("import os\nprint(os.getcwd())\n_ = open('notes.txt', 'w').write('kept')")
        assert r.error is None, r.error
        assert r.stdout == f"{scratch.resolve()}\n"
    assert (scratch / "notes.txt").read_text() == "kept"  # a caller-owned scratch dir is kept


def test_bad_arguments_are_rejected():
    with pytest.raises(TypeError, match="prompt must be a str"):
        Sandbox(b"bytes", handler=lambda r: [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="handler must be callable"):
        Sandbox("p", handler=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cell_timeout_s"):
        SandboxLimits(cell_timeout_s=0)
    with pytest.raises(ValueError, match="launcher"):
        SandboxLimits(launcher="docker")  # type: ignore[arg-type]


def test_asyncio_imports_and_runs_in_a_cell(sb):
    """Legit code: asyncio's import sets a code flag (types.coroutine) and its loop uses a socketpair (issue 20)."""
    r = sb.run_cell("import asyncio\nasync def twice(x):\n    await asyncio.sleep(0)\n    return 2 * x\n"
                    "print(asyncio.run(twice(21)))")
    assert r.error is None and r.stdout == "42\n", r
    r = sb.run_cell("import asyncio\nasync def spawn():\n    await asyncio.create_subprocess_exec('/bin/true')\n"
                    "asyncio.run(spawn())")
    assert r.error is not None and "starting processes is not allowed" in r.error, r
