"""Load the worker's weights in transformers, wrapped by nnsight, and render prompts like vLLM does.

The replay must see the same token ids vLLM saw: the chat template is rendered to text and
tokenized without extra special tokens (vLLM's chat endpoint does the same), and the answer is
tokenized on its own and appended (the ids vLLM generated follow the prompt ids, they were never
re-tokenized together with it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlm_rig.worker.settings import DEFAULT_DTYPE

_DTYPES = {
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
}


def resolve_dtype(name: str | None) -> torch.dtype | str:
    if name is None or name == "auto":
        return "auto"
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose from {sorted(_DTYPES)} or 'auto'") from None


@dataclass
class Prompt:
    """A rendered, tokenized chat prompt plus where each message's content sits in it."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]
    content_starts: list[int | None]  # char offset of each message's content in `text`

    def token_span(self, char_start: int, char_end: int) -> list[int]:
        """Token indices overlapping the char span [char_start, char_end) of `text`."""
        return [i for i, (s, e) in enumerate(self.offsets) if s < char_end and e > char_start and e > s]


class ReplayModel:
    """The worker model in nnsight: one object owns the HF model, its tokenizer and the wrapper."""

    def __init__(self, model: str, *, dtype: str | None = DEFAULT_DTYPE, device: str = "cpu",
                 quantization: str = "none") -> None:
        from rlm_rig.interp._nnsight import nnsight
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        from rlm_rig.worker.models import resolve_model

        path = resolve_model(model)
        self.path = path
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.chat_template is None:
            raise ValueError(f"tokenizer of {model!r} has no chat template; cannot replay chat sub_calls")
        self.quantization = quantization
        self.hf = _load_causal_lm(AutoModelForCausalLM, path, dtype, device, quantization)
        # the compute dtype (4-bit weights are stored as uint8; norms and embeddings keep the compute dtype)
        self.dtype = next(p.dtype for p in self.hf.parameters() if p.dtype.is_floating_point)
        self.nn = nnsight.TransformersModel(self.hf, tokenizer=self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    # -- structure --------------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.hf.config.hidden_size)

    # -- architecture: the one place that knows the model's module tree (the Qwen2 / Llama layout). A model
    # with another layout needs only these methods (and `component_output`) adapted, as nnsight's rename idea.
    def decoder(self) -> Any:
        """The stack of decoder layers with its final norm (plain torch modules, for hook-based methods)."""
        return self.hf.get_decoder()

    def layers(self) -> list[Any]:
        return list(self.decoder().layers)

    def final_norm(self) -> Any:
        return self.decoder().norm

    def unembed(self) -> Any:
        """The output embedding (lm_head): residual stream -> logits."""
        return self.hf.get_output_embeddings()

    @staticmethod
    def attn(layer: Any) -> Any:
        return layer.self_attn

    @staticmethod
    def mlp(layer: Any) -> Any:
        return layer.mlp

    @staticmethod
    def o_proj(layer: Any) -> Any:
        """The attention output projection: its input is the heads' outputs side by side."""
        return layer.self_attn.o_proj

    def head_geometry(self) -> tuple[int, int]:
        """(attention heads, head_dim) of every layer."""
        cfg = self.hf.config
        n_heads = int(cfg.num_attention_heads)
        return n_heads, int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)

    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """The final hidden states (after the final norm) of ``ids`` [B, T], without the unembedding."""
        return self.decoder()(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state

    def layers_env(self):
        """The nnsight envoys of the decoder layers (Qwen2/Llama layout: model.model.layers)."""
        return self.nn.model.layers

    def unembed_env(self):
        """The nnsight envoy of the unembedding (its ``.output`` is the logits inside a trace)."""
        return self.nn.lm_head

    def resolve_layers(self, layers: list[int] | None) -> list[int]:
        if layers is None:
            return list(range(self.n_layers))
        out = []
        for layer in layers:
            li = layer + self.n_layers if layer < 0 else layer
            if not 0 <= li < self.n_layers:
                raise ValueError(f"layer {layer} out of range for a {self.n_layers}-layer model")
            out.append(li)
        return sorted(set(out))

    # -- prompts ------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, Any]]) -> Prompt:
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        starts: list[int | None] = []
        pos = 0
        for m in messages:
            c = m.get("content")
            if not isinstance(c, str) or not c:
                starts.append(None)
                continue
            i = text.find(c, pos)
            starts.append(i if i >= 0 else None)
            if i >= 0:
                pos = i + len(c)
        return Prompt(text, list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], starts)

    def encode_answer(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def eos_ids(self) -> set[int]:
        ids: set[int] = set()
        gc = getattr(self.hf, "generation_config", None)
        e = getattr(gc, "eos_token_id", None) if gc is not None else None
        for x in [e, self.tokenizer.eos_token_id]:
            if isinstance(x, int):
                ids.add(x)
            elif isinstance(x, (list, tuple)):
                ids.update(int(v) for v in x)
        return ids

    def batch(self, seqs: list[list[int]]) -> dict[str, torch.Tensor]:
        """Right-padded batch: positions of real tokens are unchanged by padding (causal attention)."""
        t = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), t), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}

    @torch.no_grad()
    def greedy(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation in plain transformers (no hooks), stopping at an eos id."""
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        eos = sorted(self.eos_ids())
        out = self.hf.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos or None,
            pad_token_id=self.pad_id,
        )
        gen = out[0, len(prompt_ids) :].tolist()
        cut = [i for i, t in enumerate(gen) if t in self.eos_ids()]
        return gen[: cut[0]] if cut else gen


def _load_causal_lm(auto: Any, path: str, dtype: str | None, device: str, quantization: str) -> Any:
    """The weights on `device`; ``nf4``/``fp4`` load them 4-bit through bitsandbytes exactly as the controller's
    transformers backend does (`controller.backends.TransformersLM`), so a controller replay on GPU 0 reads the
    weights that wrote the run. The compute dtype is then `dtype` (the 4-bit parameters have none of their own)."""
    if quantization == "none":
        return auto.from_pretrained(path, dtype=resolve_dtype(dtype)).to(torch.device(device)).eval()
    from transformers import BitsAndBytesConfig

    compute = resolve_dtype(dtype)
    compute = torch.bfloat16 if compute == "auto" else compute
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quantization, bnb_4bit_compute_dtype=compute,
                           bnb_4bit_use_double_quant=True)
    return auto.from_pretrained(path, dtype=compute, quantization_config=q, device_map={"": device}).eval()


# -- component sites inside an nnsight trace (was interp/model.py) -------------------------------------------
# nnsight (>= 0.5) runs intervention code on real values, in module execution order, so within a layer the
# attention output must be touched before the MLP output, and both before the layer's output (the residual
# stream after the layer). `COMPONENT_ORDER` encodes that order.
COMPONENT_ORDER = {"attn": 0, "mlp": 1, "resid": 2}


def component_output(layer: Any, component: str):
    """The tensor [batch, seq, d_model] a component writes into the residual stream at this layer.

    Writing into it in place (``t[i, pos] = v``) patches the forward pass.
    """
    if component == "attn":
        out = layer.self_attn.output
    elif component == "mlp":
        out = layer.mlp.output
    elif component == "resid":
        out = layer.output
    else:
        raise ValueError(f"unknown component {component!r}; choose resid, attn or mlp")
    return out[0] if isinstance(out, tuple) else out


def ordered_sites(layers: list[int], components: list[str]) -> list[tuple[int, str]]:
    """(layer, component) pairs in the order the forward pass reaches them."""
    return sorted({(li, c) for li in layers for c in components}, key=lambda lc: (lc[0], COMPONENT_ORDER[lc[1]]))
