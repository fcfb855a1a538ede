"""Architecture facts of a model (layers, widths, heads, vocabulary), for memory planning before any load.

WHY shipped facts: `rlm-rig plan` must answer "will this fit?" on a machine that has not downloaded
the 14B controller yet (or has no network). A local folder's own ``config.json`` always wins; a hub
id falls back to the facts in ``configs/facts/models.yaml`` (copied from the published config.json
files); a builtin (``tiny``, ``smollm2``) reads its cached folder when built, else its recipe's facts.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

FACTS_FILE = Path(__file__).resolve().parent / "facts" / "models.yaml"


class UnknownArchitecture(ValueError):
    """No config.json and no shipped facts for this model."""


@dataclass(frozen=True)
class Arch:
    """A decoder-only transformer's shape (Qwen2/Llama layout: gated MLP, grouped-query attention)."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool = False
    max_positions: int = 32768
    source: str = ""  # where the facts came from (a config.json path or the shipped facts file)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_params(self) -> int:
        """Parameters of the per-layer matrices (q, k, v, o, gate, up, down): what 4-bit quantizes."""
        h, kv, i = self.hidden, self.kv_dim, self.intermediate
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * i)

    def other_params(self) -> int:
        """Embeddings, LM head, norms and biases: kept in the compute dtype by bitsandbytes."""
        h, kv = self.hidden, self.kv_dim
        emb = self.vocab * h * (1 if self.tied else 2)
        return emb + self.layers * (2 * h + h + 2 * kv) + h

    def params(self) -> int:
        return self.linear_params() + self.other_params()

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V of every layer for one token."""
        return self.layers * 2 * self.kv_dim * dtype_bytes


@functools.cache
def shipped_facts() -> dict[str, dict]:
    data = yaml.safe_load(FACTS_FILE.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{FACTS_FILE}: expected a mapping of model id -> facts")
    return data


def from_config_json(path: str | Path) -> Arch:
    """Read a Hugging Face config.json (a file or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    c = json.loads(p.read_text())
    c = c.get("text_config", c)  # multimodal wrappers keep the language model's shape one level down
    heads = int(c["num_attention_heads"])
    return Arch(
        layers=int(c["num_hidden_layers"]),
        hidden=int(c["hidden_size"]),
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        intermediate=int(c["intermediate_size"]),
        vocab=int(c["vocab_size"]),
        tied=bool(c.get("tie_word_embeddings", False)),
        max_positions=int(c.get("max_position_embeddings") or 32768),
        source=str(p),
    )


def arch_for(model: str, locate: Callable[[str], Path | None] | None = None) -> Arch:
    """The shape of `model`: a local folder's config.json, a built builtin's (``locate`` maps a builtin
    name such as ``tiny:0`` to its cached folder; configs imports nothing of the rig, so the caller
    passes `worker.models.built_model_folder`), else the shipped facts."""
    ref = model.strip()
    p = Path(ref).expanduser()
    if p.exists():
        if (p / "config.json").is_file() or p.name == "config.json":
            return from_config_json(p)
        raise UnknownArchitecture(f"model folder {ref!r} has no config.json")
    name = ref.partition(":")[0]
    folder = locate(ref) if locate is not None else None
    if folder is not None:
        return from_config_json(folder)
    facts = shipped_facts().get(ref) or shipped_facts().get(name)
    if facts is None:
        raise UnknownArchitecture(
            f"no architecture facts for {ref!r}: give a local folder with a config.json, or add the model's "
            f"layers/hidden/heads/kv_heads/intermediate/vocab to {FACTS_FILE.name}"
        )
    return Arch(**facts, source=f"{FACTS_FILE.name}:{ref}")
