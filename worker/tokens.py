"""Token counting with the worker's own tokenizer.

WHY: chunk sizes and context budgets are decided in tokens of the model that will read them, not in
characters; loading a tokenizer is slow, so each one is loaded once per process.
"""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

__all__ = ["count_chat_tokens", "count_tokens", "load_fast_tokenizer", "load_tokenizer"]

_LOCK = threading.Lock()


@functools.lru_cache(maxsize=16)
def _load(name: str, local_only: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, local_files_only=local_only)


def load_tokenizer(name_or_path: str | Path):
    """The (cached) Hugging Face tokenizer for a hub id or a local model directory."""
    if not name_or_path:
        raise ValueError("load_tokenizer needs a hub id or a path")
    name = str(name_or_path)
    looks_local = name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()
    if looks_local:
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"tokenizer path {path} does not exist")
        name = str(path.resolve())
    with _LOCK:
        try:
            return _load(name, looks_local)
        except OSError as exc:
            raise OSError(f"cannot load a tokenizer from {name!r}: {exc}") from exc


@functools.lru_cache(maxsize=16)
def _load_file(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def load_fast_tokenizer(name_or_path: str | Path):
    """The model folder's ``tokenizer.json`` through `tokenizers` alone (cached), else :func:`load_tokenizer`.

    WHY: the harness only counts tokens, and importing transformers to do so cost a cold ``ask``
    ~7-9 s. A folder without ``tokenizer.json`` (or a hub id) still goes through transformers.
    """
    path = Path(str(name_or_path)).expanduser()
    file = path / "tokenizer.json"
    if file.is_file():
        with _LOCK:
            return _load_file(str(file.resolve()))
    return load_tokenizer(name_or_path)


def _tok(tokenizer: Any):
    return load_tokenizer(tokenizer) if isinstance(tokenizer, (str, Path)) else tokenizer


def count_tokens(text: str, tokenizer: Any) -> int:
    """Tokens in `text` with no special tokens added (`tokenizer`: object, hub id or path)."""
    if not isinstance(text, str):
        raise TypeError(f"count_tokens takes a str, got {type(text).__name__}")
    return len(_tok(tokenizer)(text, add_special_tokens=False)["input_ids"])


def count_chat_tokens(messages: list[dict], tokenizer: Any, *, add_generation_prompt: bool = True) -> int:
    """Prompt tokens a chat costs after the chat template (what the server reports as prompt_tokens)."""
    tok = _tok(tokenizer)
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    ids = out["input_ids"] if hasattr(out, "keys") else out
    return len(ids)
