"""Controller output parsing: fences, FINAL / FINAL_VAR rules, stopping after one cell."""
from rlm_rig.controller.parsing import closed_cell_end, find_final, parse_turn, truncate_cell


def test_repl_and_python_fences_are_code_other_languages_are_not():
    t = parse_turn("look:\n```repl\nx = 1\n```\n```python\ny = 2\n```\n```bash\nls\n```\n")
    assert t.code_blocks == ["x = 1", "y = 2"]
    assert t.code == "x = 1"


def test_empty_code_block_is_ignored():
    assert parse_turn("```repl\n\n```").code is None


def test_unclosed_fence_runs_to_end():
    assert parse_turn("```repl\nprint(1)\nprint(2)").code == "print(1)\nprint(2)"


def test_final_outside_code_anchored_at_line_start():
    assert parse_turn("Done.\nFINAL(42)").final.value == "42"
    assert parse_turn("  FINAL(42)").final.value == "42"
    # mentioned mid-sentence: not an answer
    assert parse_turn("I will call FINAL(42) once sure.").final is None


def test_final_inside_code_is_not_a_prose_final():
    t = parse_turn("```repl\nFINAL(3)\n```")
    assert t.final is None and t.code == "FINAL(3)"


def test_final_nested_parentheses_and_quotes():
    assert find_final("FINAL(f(g(1), (2)))").value == "f(g(1), (2))"
    assert find_final("FINAL(the answer is ')' (really))").value == "the answer is ')' (really)"
    assert find_final("FINAL(\\boxed{7} (seven))").value == "\\boxed{7} (seven)"


def test_final_spanning_lines():
    assert find_final("FINAL(a,\n b)").value == "a,\n b"


def test_unbalanced_final_is_not_taken():
    assert find_final("FINAL(oops") is None


def test_final_var():
    f = parse_turn("ok\nFINAL_VAR(answer)").final
    assert f.kind == "FINAL_VAR" and f.value == "answer"
    assert parse_turn("FINAL_VAR('answer')").final.value == "answer"


def test_first_final_wins():
    assert find_final("FINAL(1)\nFINAL(2)").value == "1"


def test_closed_cell_end_stops_after_first_cell():
    text = "plan\n```repl\nx=1\n```\nmore text\n```repl\ny=2\n```\n"
    end = closed_cell_end(text)
    assert text[:end] == "plan\n```repl\nx=1\n```\n"
    assert truncate_cell(text) == "plan\n```repl\nx=1\n```\n"
    assert closed_cell_end("```repl\nx=1\n") is None
    assert closed_cell_end("```repl\nx=1\n```") is not None
    # a bash block does not count as a cell
    assert closed_cell_end("```bash\nls\n```\n") is None
