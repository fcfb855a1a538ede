"""`rlm-rig plan`: will a profile fit its GPUs, before anything loads.

Researchers lose hours to out-of-memory errors that show up minutes into a load. The plan works from
each model's architecture (``configs.archs``: a local config.json, else facts shipped in the repo),
so it runs offline and in a second. For every GPU a profile uses it lists, per phase:

- the eval phase: each vLLM server's budget (``gpu_memory_utilization`` x the card), its weights (by
  dtype, or 4-bit bitsandbytes), its runtime overhead, and the KV pool left, against the KV that
  ``max_model_len`` (one full sequence, which vLLM needs to start) and ``max_model_len x max_num_seqs``
  (every slot full) would take; an in-process transformers controller's weights, its context's KV
  cache and its prefill transient;
- the interp phase (the worker's server stopped, its GPU reused): the replay copy's weights plus the
  peak of capture and of a patching sweep at the configured batch size, prompt length, layers and
  saved sites.

Then a verdict per GPU: fits, or short by X GiB and which knob to turn. The interp transient is
checked against measured peaks (bench/bench_plan_interp.py, tests/integration/test_plan_doctor.py); the vLLM
overheads are estimates from vLLM 0.32.0's defaults, labelled as such.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rlm_rig.configs.archs import Arch, arch_for
from rlm_rig.configs.schema import RigConfig
from rlm_rig.worker.settings import ServerSettings

GiB = 2**30
CUDA_CONTEXT = 0.5 * GiB  # CUDA context + cuBLAS workspace per process, outside torch's allocator
CUDA_GRAPHS = 0.5 * GiB  # vLLM's captured graphs (0 with enforce_eager)
VLLM_BATCHED_TOKENS = 2048  # vLLM 0.32.0's default max_num_batched_tokens for a 20-48 GB card (API server)
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + double-quantized absmax (block 64, second level 256)
# Cards the profiles were written for; `--gpu-gib` or a visible GPU overrides.
PROFILE_GPU_GIB = {"a4500x2": 20470 / 1024, "a4500x2-hf": 20470 / 1024, "single-gpu": 24.0}
DEFAULT_GPU_GIB = 24.0


def dtype_bytes(dtype: str | None) -> int:
    d = (dtype or "float16").lower()
    return 4 if d in ("float32", "fp32", "float") else 2


# -- the pieces ---------------------------------------------------------------------------------------
def weight_bytes(a: Arch, dtype: str | None, quant: str | None) -> float:
    """Linear layers in 4-bit when quantized (bitsandbytes keeps embeddings, head and norms in the
    compute dtype); everything in `dtype` otherwise."""
    b = dtype_bytes(dtype)
    if quant and quant not in ("none",):
        return a.linear_params() * NF4_BYTES + a.other_params() * b
    return a.params() * b


def forward_bytes(a: Arch, b: int, batch: int, tokens: int, *, mask: bool = True) -> float:
    """Peak transient of one no-grad transformers forward over [batch, tokens], LM head at the last
    position only, read off the Qwen2/Llama code: the peak sits in a layer's MLP, where act(gate), up
    and their product (3 x intermediate per token) coexist with three residual-width tensors (the
    layer's input, still held by the model's layer loop, the post-attention residual and its normed
    copy) and, past the first layer, the embedding output (a local of the model's forward).
    Attention's temporaries (q, rotary copies, GQA-repeated k/v, output) stay under the MLP's for Qwen2
    shapes but are taken when larger. `mask`: the [batch, 1, T, T] boolean attention mask."""
    per_token = 3 * a.hidden + (a.hidden if a.layers > 1 else 0) + max(3 * a.intermediate, 6 * a.hidden + 4 * a.kv_dim)
    out = batch * tokens * per_token * b + batch * a.vocab * 4
    if mask:
        out += batch * tokens * tokens
    return out


def interp_capture_bytes(a: Arch, b: int, *, batch: int, tokens: int, n_sites: int, positions: int = 1) -> float:
    """One capture forward: the transient plus the captured rows (positions x sites x hidden)."""
    return forward_bytes(a, b, batch, tokens) + batch * positions * n_sites * a.hidden * b


def interp_patch_bytes(a: Arch, b: int, *, batch_size: int, tokens: int, n_sites: int, offload: bool) -> float:
    """The larger of a sweep's two forwards: the reference [clean, corrupt] run, whose saved sites
    ([2, T, hidden] each) stay on the device unless offloaded, and a patched forward of `batch_size`
    copies with those sources still held."""
    sources = 0 if offload else n_sites * 2 * tokens * a.hidden * b
    reference = forward_bytes(a, b, 2, tokens) + sources
    patched = forward_bytes(a, b, batch_size, tokens) + sources
    return max(reference, patched)


def controller_replay_bytes(a: Arch, b: int, *, tokens: int, batch_size: int, offload: bool) -> float:
    """`interp controller` on the controller's card (docs/INTERP.md, "Memory of the new jobs", with T = the
    conversation): attribution holds one layer's autograd graph G(T) ~ T(8d + 4f)b, the same layer's forward
    again for the source, an fp32 gradient and difference (2Td x 4), the stored layer inputs of both runs
    (2LTd x b, 0 with offload) and a row of logits; its exact follow-ups are a patching sweep over one layer's
    component (one site) and the top-k check on the shared prefix's KV cache (`controller_prefix_exact_bytes`)."""
    graph = tokens * (8 * a.hidden + 4 * a.intermediate) * b
    stored = 0 if offload else 2 * a.layers * tokens * a.hidden * b
    attribution = graph + forward_bytes(a, b, 1, tokens) + 2 * tokens * a.hidden * 4 + stored + a.vocab * 4
    exact = interp_patch_bytes(a, b, batch_size=batch_size, tokens=tokens, n_sites=1, offload=offload)
    return max(attribution, exact, controller_prefix_exact_bytes(a, b, tokens=tokens, batch_size=batch_size))


def controller_prefix_exact_bytes(a: Arch, b: int, *, tokens: int, batch_size: int) -> float:
    """`prefix_exact.exact_sites_prefix` (the top-k exact check of a controller pair): the prefix's keys and values
    of every layer stay on the device, and each batch of patched copies runs the suffix on that cache expanded to
    the batch, which transformers' DynamicCache concatenates into `batch_size` full-length copies per layer: (1 + B)
    x the conversation's KV cache, never offloaded (bench/bench_plan_interp.py, docs/BENCHMARKS.md). The suffix
    after the edit is short (the told values sit in the last cell outputs) and its forward is left out."""
    return (1 + batch_size) * tokens * a.kv_bytes_per_token(b) + batch_size * a.vocab * 4


def controller_quantization(c: Any) -> str:
    """How the controller's weights were quantized when it ran: its own setting in transformers, NF4 for a vLLM
    server with bitsandbytes in-flight quantization (NF4 is what that plugin loads), else none."""
    if c.backend == "transformers":
        return c.quantization
    if c.backend == "openai" and c.server is not None and (c.server.quantization or "") == "bitsandbytes":
        return "nf4"
    return "none"


def _controller_replay_lines(cfg: RigConfig, icfg: Any, a: Arch, phase: Phase) -> None:
    """The controller's weights as the rig loaded them (NF4 on a4500x2-hf) and the peak of `interp controller`
    over a conversation as long as the controller's window (the longest it can have read)."""
    c = cfg.controller
    b = dtype_bytes(c.dtype)
    quant = controller_quantization(c)
    quant = None if quant == "none" else quant
    tokens = c.context_tokens or a.max_positions
    if c.server is not None and c.server.max_model_len:
        tokens = min(tokens, c.server.max_model_len)
    if icfg.controller_max_tokens:
        tokens = min(tokens, icfg.controller_max_tokens)
    phase.lines += [
        Line(f"controller replay: weights, {('4-bit ' + quant.upper() + ', ') if quant else ''}{c.dtype}",
             weight_bytes(a, c.dtype, quant) / GiB),
        Line("controller replay: CUDA context", CUDA_CONTEXT / GiB),
        Line(f"controller replay: peak of attribution / exact patching over a {tokens}-token conversation (batch "
             f"{icfg.batch_size}{', layer inputs offloaded' if icfg.offload_reference else ''})",
             controller_replay_bytes(a, b, tokens=tokens, batch_size=icfg.batch_size,
                                     offload=icfg.offload_reference) / GiB),
    ]


# -- the report -----------------------------------------------------------------------------------------
@dataclass
class Line:
    label: str
    gib: float
    note: str = ""
    counts: bool = True  # False: shown for context (e.g. a requirement inside a budget), not added up


@dataclass
class Phase:
    name: str
    lines: list[Line] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "short by X GiB: turn KNOB"
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(x.gib for x in self.lines if x.counts)


@dataclass
class GpuPlan:
    gpu: str
    capacity_gib: float
    phases: list[Phase] = field(default_factory=list)

    @property
    def peak_gib(self) -> float:
        return max((p.total for p in self.phases), default=0.0)

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.capacity_gib and not any(p.problems for p in self.phases)


@dataclass
class Plan:
    profile: str
    gpus: list[GpuPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return all(g.fits for g in self.gpus)

    def gpu(self, name: str) -> GpuPlan:
        return next(g for g in self.gpus if g.gpu == name)


def _physical(device: str | None, visible: str | None) -> str | None:
    """'GPU n' a component lands on, or None for the CPU."""
    if visible is not None and visible.strip():
        return f"GPU {visible.split(',')[0].strip()}"
    if device and device.startswith("cuda"):
        _, _, idx = device.partition(":")
        return f"GPU {idx or 0}"
    return None


def vllm_phase_lines(name: str, a: Arch, s: ServerSettings, dtype: str, card: float, phase: Phase) -> None:
    """A vLLM server's share of a card: budget, weights, overhead, KV pool vs what the window needs."""
    b = dtype_bytes(dtype)
    quant = s.quantization if s.quantization in ("bitsandbytes",) else None
    budget = s.gpu_memory_utilization * card * GiB
    w = weight_bytes(a, dtype, quant)
    batched = max(VLLM_BATCHED_TOKENS, s.max_model_len if s.max_model_len < VLLM_BATCHED_TOKENS else 0)
    act = forward_bytes(a, b, 1, batched) + (s.max_num_seqs or 256) * a.vocab * 4
    overhead = CUDA_CONTEXT + act + (0 if s.enforce_eager else CUDA_GRAPHS)
    pool = budget - w - overhead
    kv_tok = a.kv_bytes_per_token(b)
    one = s.max_model_len * kv_tok
    seqs = s.max_num_seqs or 256
    qdesc = "4-bit NF4 (bitsandbytes), embeddings/head in " + dtype if quant else dtype
    phase.lines += [
        Line(f"{name}: weights, {qdesc}", w / GiB),
        Line(f"{name}: CUDA context, activations at {batched} batched tokens"
             + ("" if s.enforce_eager else ", CUDA graphs") + " (estimate)", overhead / GiB),
        Line(f"{name}: KV pool ({kv_tok / 1024:.0f} KiB/token: {max(0, pool) / kv_tok / 1000:.0f}K tokens)", max(0.0, pool) / GiB),
        Line(f"{name}:   KV for one max_model_len={s.max_model_len} sequence (needed to start)", one / GiB, counts=False),
        Line(f"{name}:   KV for max_model_len x max_num_seqs={seqs} (every slot full)", one * seqs / GiB, counts=False),
    ]
    if pool < one:
        short = (one - pool) / GiB
        fit_len = max(0, int(pool / kv_tok) // 256 * 256)
        need_util = min(1.0, (w + overhead + one) / (card * GiB))
        phase.problems.append(
            f"{name}: KV pool short by {short:.2f} GiB for one {s.max_model_len}-token sequence: lower "
            f"max_model_len to {fit_len}" + (f" or raise gpu_memory_utilization to {need_util:.2f}" if need_util < 0.98 else "")
        )
    elif pool < one * seqs:
        phase.warnings.append(
            f"{name}: the KV pool holds {pool / kv_tok / 1000:.0f}K tokens, {pool / one:.1f} full-length sequences "
            f"of max_num_seqs={seqs}: beyond that vLLM queues or preempts requests (slower, never out of memory)"
        )


def _interp_lines(cfg: RigConfig, icfg: Any, a: Arch, dtype: str, phase: Phase) -> None:
    b = dtype_bytes(dtype)
    layers = icfg.layers if icfg.layers is not None else list(range(a.layers))
    n_sites = len(set(layers)) * len(set(icfg.components))
    tokens = cfg.chunk_budget() + cfg.rlm.instruction_reserve_tokens + icfg.max_answer_tokens
    if icfg.max_prompt_tokens:
        tokens = min(tokens, icfg.max_prompt_tokens + icfg.max_answer_tokens)
    pair_tokens = min(tokens, icfg.max_pair_tokens) if icfg.max_pair_tokens else tokens
    cap_batch = max(1, min(icfg.capture_batch_size, icfg.max_batch_tokens // max(1, tokens)))
    positions = max(1, len(icfg.capture_positions)) * (icfg.max_answer_tokens if "answer" in icfg.capture_positions else 1)
    cap = interp_capture_bytes(a, b, batch=cap_batch, tokens=tokens, n_sites=n_sites, positions=positions)
    patch = interp_patch_bytes(a, b, batch_size=icfg.batch_size, tokens=pair_tokens, n_sites=n_sites,
                               offload=icfg.offload_reference)
    phase.lines += [
        Line(f"interp: replay weights, {dtype}", weight_bytes(a, dtype, None) / GiB),
        Line("interp: CUDA context", CUDA_CONTEXT / GiB) if str(icfg.device).startswith("cuda") else Line("", 0.0),
        Line(f"interp: peak of capture (batch {cap_batch} x {tokens} tokens) and patching (batch {icfg.batch_size} x "
             f"{pair_tokens} tokens, {n_sites} saved sites{', offloaded' if icfg.offload_reference else ''})",
             max(cap, patch) / GiB),
    ]
    phase.lines = [x for x in phase.lines if x.label]
    if patch > cap and not icfg.offload_reference:
        saved = n_sites * 2 * pair_tokens * a.hidden * b / GiB
        phase.warnings.append(f"interp: patching keeps {saved:.2f} GiB of source activations on the device; "
                              "interp.offload_reference: true moves them to CPU memory")


# long: one block per GPU and phase of the profile, in the order `plan` prints them
def make_plan(cfg: RigConfig, *, gpu_gib: float | None = None, interp_cfg: Any = None,
              locate: Any = None) -> Plan:
    """The budget of every GPU the profile uses. `gpu_gib`: the card's memory (default: the card the
    profile was written for, PROFILE_GPU_GIB, else 24 GiB)."""
    card = gpu_gib or PROFILE_GPU_GIB.get(cfg.name, DEFAULT_GPU_GIB)
    gpus: dict[str, GpuPlan] = {}
    notes: list[str] = []

    def phase(gpu: str, name: str) -> Phase:
        g = gpus.setdefault(gpu, GpuPlan(gpu, card))
        for p in g.phases:
            if p.name == name:
                return p
        p = Phase(name)
        g.phases.append(p)
        return p

    c, w = cfg.controller, cfg.worker
    # -- eval phase: the controller and the worker -------------------------------------------------------
    if c.backend == "openai" and c.server is not None and c.server.url is None and c.server.device == "cuda":
        gpu = _physical(None, c.server.cuda_visible_devices) or "GPU 0"
        vllm_phase_lines("controller", arch_for(c.model or "", locate), c.server, c.dtype, card, phase(gpu, "eval"))
    elif c.backend == "transformers" and (gpu := _physical(c.device, None)):
        a = arch_for(c.model or "", locate)
        b = dtype_bytes(c.dtype)
        ctx = c.context_tokens or a.max_positions
        p = phase(gpu, "eval")
        p.lines += [
            Line(f"controller: weights, {'4-bit ' + c.quantization.upper() + ' (bitsandbytes), embeddings/head in ' + c.dtype if c.quantization != 'none' else c.dtype}",
                 weight_bytes(a, c.dtype, c.quantization if c.quantization != "none" else None) / GiB),
            Line("controller: CUDA context", CUDA_CONTEXT / GiB),
            Line(f"controller: KV cache of a {ctx}-token context ({a.kv_bytes_per_token(b) / 1024:.0f} KiB/token)",
                 ctx * a.kv_bytes_per_token(b) / GiB),
            Line(f"controller: prefill transient at {ctx} tokens", forward_bytes(a, b, 1, ctx) / GiB),
        ]
    elif c.backend == "openai" and c.server is not None and c.server.url:
        notes.append(f"controller: attached at {c.server.url}; its memory is that server's business")
    else:
        notes.append(f"controller: {c.backend} backend, no GPU memory")
    for name, ws in cfg.worker_map().items():  # every served sub-model (a profile's workers: map)
        _worker_lines("worker" if name == cfg.default_worker_name() else f"worker {name}", ws, card, locate, phase, notes)
    if not cfg.workers:
        notes += second_worker(cfg, card, locate)
    # -- interp phase: on the worker's GPU once its server is stopped ------------------------------------
    if interp_cfg is not None and str(interp_cfg.device).startswith("cuda"):
        worker_gpu = _physical(None, w.server.cuda_visible_devices) if w.server.device == "cuda" else None
        gpu = worker_gpu if interp_cfg.stop_server and worker_gpu else (_physical(interp_cfg.device, None) or "GPU 0")
        p = phase(gpu, "interp")
        spec_model = interp_cfg.model or w.model
        _interp_lines(cfg, interp_cfg, arch_for(spec_model, locate), interp_cfg.dtype or w.dtype, p)
        if not interp_cfg.stop_server:
            # a worker server left running (serve-worker) shares the card; the controller is not loaded
            for other in gpus[gpu].phases:
                if other.name == "eval":
                    p.lines += [Line(f"{x.label} (if still up: interp.stop_server is false)", x.gib, counts=x.counts)
                                for x in other.lines if x.label.startswith("worker:")]
    elif interp_cfg is not None:
        notes.append("interp: on the CPU, no GPU memory")
    # -- the controller replay (`interp controller`): on the controller's card once the eval is over ------------
    cgpu = (_physical(c.device, None) if c.backend == "transformers" else
            (_physical(None, c.server.cuda_visible_devices) or "GPU 0") if c.backend == "openai" and c.server is not None
            and c.server.url is None and c.server.device == "cuda" else None)
    if interp_cfg is not None and cgpu and c.model:
        _controller_replay_lines(cfg, interp_cfg, arch_for(c.model, locate), phase(cgpu, "controller replay"))
    plan = Plan(cfg.name, sorted(gpus.values(), key=lambda g: g.gpu), notes)
    for g in plan.gpus:
        for p in g.phases:
            if p.total > g.capacity_gib:
                p.problems.append(f"{p.name} phase needs {p.total:.2f} GiB, {p.total - g.capacity_gib:.2f} GiB more than "
                                  f"the card's {g.capacity_gib:.2f} GiB: {_knob(p)}")
    return plan


def _worker_lines(label: str, w: Any, card: float, locate: Any, phase: Any, notes: list[str]) -> None:
    if w.backend == "vllm" and w.server.url is None and w.server.device == "cuda":
        gpu = _physical(None, w.server.cuda_visible_devices) or "GPU 0"
        vllm_phase_lines(label, arch_for(w.model, locate), w.server, w.dtype, card, phase(gpu, "eval"))
    elif w.backend == "transformers" and (gpu := _physical(w.device, None)):
        phase(gpu, "eval").lines.append(Line(f"{label}: weights, {w.dtype}", weight_bytes(arch_for(w.model, locate), w.dtype, None) / GiB))
    elif w.server.device == "cpu" or w.backend == "transformers":
        notes.append(f"{label}: on the CPU, no GPU memory")
    elif w.server.url:
        notes.append(f"{label}: attached at {w.server.url}; its memory is that server's business")


def second_worker(cfg: RigConfig, card: float, locate: Any = None) -> list[str]:
    """Would a second sub-model (another copy of the worker's model) fit beside the served worker? WHY: a
    ``workers:`` map serves each model with its own vLLM server, and each server claims its
    gpu_memory_utilization share of its card up front, so the question is the space outside that share."""
    w = cfg.worker
    if w.backend != "vllm" or w.server.url is not None or w.server.device != "cuda":
        return []
    gpu = _physical(None, w.server.cuda_visible_devices) or "GPU 0"
    shares = w.server.gpu_memory_utilization
    c = cfg.controller
    if c.backend == "openai" and c.server is not None and c.server.url is None and c.server.device == "cuda" \
            and (_physical(None, c.server.cuda_visible_devices) or "GPU 0") == gpu:
        shares += c.server.gpu_memory_utilization
    a = arch_for(w.model, locate)
    s = w.server
    need = (weight_bytes(a, w.dtype, None) + CUDA_CONTEXT + (0 if s.enforce_eager else CUDA_GRAPHS)
            + s.max_model_len * a.kv_bytes_per_token(dtype_bytes(w.dtype))) / GiB
    left = max(0.0, (1.0 - shares) * card)
    verdict = "fits" if need <= left else "does not fit"
    if need <= left:
        fix = ""
    elif 2 * need <= 0.95 * card:  # both at their smallest shares
        fix = (f"; it would beside a worker share of {need / card:.2f}: set worker.server.gpu_memory_utilization to "
               f"{need / card:.2f} and give the second server the same")
    else:
        small = max(0.0, left * GiB - CUDA_CONTEXT) / dtype_bytes(w.dtype) / 1e9
        fix = f"; put it on another GPU, or serve a model of at most ~{small:.1f}B parameters ({w.dtype}) there"
    return [f"second worker: another {w.model} beside the worker on {gpu} needs at least {need:.2f} GiB (weights, "
            f"overhead, one {s.max_model_len}-token sequence); {left:.2f} GiB lie outside the servers' shares there: "
            f"{verdict}{fix}"]


def _knob(p: Phase) -> str:
    labels = " ".join(x.label for x in p.lines)
    if "controller replay" in labels:
        return "set interp.offload_reference: true, lower interp.batch_size, or replay shorter conversations"
    if "interp" in labels:
        return "lower interp.batch_size, set interp.offload_reference: true, or cap interp.max_pair_tokens"
    if "controller: KV cache" in labels:
        return "lower controller.context_tokens"
    return "lower gpu_memory_utilization of a server sharing this card"


def render(plan: Plan) -> list[str]:
    """Plain lines: one budget per GPU and phase, then the verdict."""
    out = [f"plan for profile {plan.profile}"]
    if not plan.gpus:
        out.append("  no GPU used: nothing to plan (CPU memory is the sandbox's and vLLM-CPU's KV space)")
    for g in plan.gpus:
        for p in g.phases:
            out.append(f"{g.gpu} ({g.capacity_gib:.2f} GiB), {p.name} phase:")
            for x in p.lines:
                out.append(f"  {x.gib:7.2f} GiB{' ' if x.counts else '*'} {x.label}")
            out.append(f"  {p.total:7.2f} GiB  total" + ("" if p.total <= g.capacity_gib else "  (over the card)"))
            out += [f"  ! {w}" for w in p.warnings]
        verdict = ("fits" if g.fits else "DOES NOT FIT") + f": peak {g.peak_gib:.2f} of {g.capacity_gib:.2f} GiB"
        out.append(f"{g.gpu}: {verdict}")
        out += [f"  short: {m}" for p in g.phases for m in p.problems]
    out += [f"note: {n}" for n in plan.notes]
    if any(not x.counts for g in plan.gpus for p in g.phases for x in p.lines):
        out.append("* inside the KV pool above, not added to the total")
    out.append("verdict: " + ("fits" if plan.fits else "does not fit (see 'short:' lines)"))
    return out


def gib(x: float) -> str:
    return f"{x:.2f} GiB" if math.isfinite(x) else "?"
