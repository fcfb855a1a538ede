"""Edge-case generators with exact gold, each a dataset of its own for ``rlm-rig eval --dataset NAME``:
needle-sweep, json-haystack, multi-needle, decoys, absent, multi-hop (see generators.py)."""
from rlm_rig.experiments.datasets.edge import generators as g
from rlm_rig.experiments.datasets.edge import scoring as s
from rlm_rig.experiments.datasets.filters import apply_filter
from rlm_rig.experiments.datasets.registry import Dataset, register

_SPLIT = "instructions = the generator's answer-format line (not in the context); question = the generated question"
_OPTIONS = ("lengths", "positions", "per_cell", "seed")


def _loader(make):
    def load(source, *, split="test", filters=None, **options):
        return apply_filter(make(**options), filters)
    return load


def _scorer(rule):
    return lambda output, gold, **_: rule(output, gold)


for _name, _make, _rule in (
    ("needle-sweep", g.needle_sweep, s.score_last_number),
    ("json-haystack", g.json_haystack, s.score_last_number),
    ("multi-needle", g.multi_needle, s.score_multi_needle),
    ("decoys", g.decoys, s.score_last_number),
    ("absent", g.absent, s.score_absent),
    ("multi-hop", g.multi_hop, s.score_last_number),
):
    register(Dataset(name=_name, load=_loader(_make), score=_scorer(_rule), score_lenient=_scorer(_rule),
                     split=_SPLIT, generated=True, options=_OPTIONS))
