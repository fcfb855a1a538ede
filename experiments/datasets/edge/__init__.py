"""Edge-case generators, registered by name for ``rlm-rig eval --dataset NAME``:
needle-sweep, json-haystack, multi-needle, decoys, absent, multi-hop (see generators.py)."""
from experiments.datasets.edge import generators as g
from experiments.datasets.edge import scoring as s
from experiments.datasets.registry import Generator, register

_SPLIT = "instructions = the generator's answer-format line (not in the context); question = the generated question"

for _gen in (
    Generator("needle-sweep", g.needle_sweep, s.score_last_number, _SPLIT),
    Generator("json-haystack", g.json_haystack, s.score_last_number, _SPLIT),
    Generator("multi-needle", g.multi_needle, s.score_multi_needle, _SPLIT),
    Generator("decoys", g.decoys, s.score_last_number, _SPLIT),
    Generator("absent", g.absent, s.score_absent, _SPLIT),
    Generator("multi-hop", g.multi_hop, s.score_last_number, _SPLIT),
):
    register(_gen)
