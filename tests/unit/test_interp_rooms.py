"""interp's rooms (issue 19, part 5): one module owns the model's module tree; the sub-rooms exist.

The attribute names below are the Qwen2/Llama layout. Any interp module other than interp/model.py
that spells one reaches into the tree itself, and a model with another layout would then need edits
in many places instead of one.
"""
from __future__ import annotations

import ast
from pathlib import Path

INTERP = Path(__file__).resolve().parents[2] / "interp"
TREE_NAMES = {"self_attn", "mlp", "o_proj", "lm_head", "get_decoder", "get_output_embeddings", "norm", "embed_tokens",
              "num_attention_heads", "num_hidden_layers"}


def tree_accesses(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr in TREE_NAMES \
                and not (isinstance(node.value, ast.Name) and node.value.id in ("model", "ReplayModel")):  # its accessors
            out.append(f"{path.relative_to(INTERP.parent)}:{node.lineno}: .{node.attr}")
    return out


def test_only_interp_model_touches_the_module_tree():
    bad = [hit for p in sorted(INTERP.rglob("*.py")) if p.name != "model.py" or p.parent != INTERP
           for hit in tree_accesses(p)]
    assert bad == []


def test_the_check_sees_a_tree_access(tmp_path):
    p = INTERP / "_probe_tree_access.py"
    p.write_text("def f(model, layer):\n    return model.hf.get_decoder(), layer.self_attn.o_proj\n")
    try:
        assert len(tree_accesses(p)) == 3
    finally:
        p.unlink()


def test_sub_rooms():
    for room in ("data", "methods", "stats", "report"):
        assert (INTERP / room / "__init__.py").is_file(), room
    assert not list(INTERP.glob("*_maps.py")), "the *_maps twins are folded into their rooms"
