"""The examples an EvalSpec selects: dataset name or path, filters, shard, each with its task
instructions. Shared by the eval loop and the checks made before it starts."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from rlm_rig.records.runlog import EvalSpec
from rlm_rig.experiments.datasets.example import Example
from rlm_rig.experiments.datasets.filters import ExampleFilter
from rlm_rig.experiments.datasets.registry import load_examples
from rlm_rig.experiments.datasets.registry import lookup, names
from rlm_rig.experiments.datasets.views import split_instructions


def resolve_dataset(spec: EvalSpec) -> tuple[str, str | None]:
    """``--dataset`` is a registered dataset name (or alias), or a path to a local OOLONG-real-format file."""
    ds = lookup(spec.dataset)
    if ds is not None:
        return ds.name, spec.source
    p = Path(spec.dataset).expanduser()
    if p.exists():
        return "oolong-real", str(p)
    raise ValueError(f"--dataset {spec.dataset!r} is neither a dataset ({', '.join(names())}) nor an existing file")


def iter_examples(spec: EvalSpec, count_tokens: Any = None) -> Iterator[Example]:
    name, source = resolve_dataset(spec)
    filt = ExampleFilter(
        question_types=spec.question_types,
        min_episodes=spec.min_episodes,
        max_episodes=spec.max_episodes,
        max_context_chars=spec.max_context_chars,
        max_context_tokens=spec.max_context_tokens,
        tokenizer=count_tokens if spec.max_context_tokens is not None else None,
        sample=spec.sample,
        seed=spec.seed,
        limit=spec.limit,
    )
    opts = dict(spec.loader_options)
    if name == "sniah" and count_tokens is not None and opts.get("unit") == "tokens":
        opts.setdefault("tokenizer", count_tokens)
    stream = load_examples(name, source, split=spec.split, filters=filt, **opts)
    for i, ex in enumerate(stream):
        if ex.instructions is None:
            ex.instructions = split_instructions(ex.dataset, ex.context)
        if spec.shard is None or i % spec.shard[1] == spec.shard[0]:
            yield ex
