"""S-NIAH (a magic number hidden in filler at a chosen depth): generator and scorer."""
from rlm_rig.experiments.datasets.registry import Dataset, register
from rlm_rig.experiments.datasets.sniah.load import load_sniah
from rlm_rig.experiments.datasets.sniah.score import score_sniah


def _load(source, *, split="test", filters=None, **options):
    if source is not None:
        raise ValueError("sniah is generated locally; it takes no source (use lengths/depths/seed options)")
    return load_sniah(filters=filters, **options)


register(Dataset(
    name="sniah",
    aliases=("s-niah", "s_niah", "niah"),
    load=_load,
    score=lambda output, gold, **_: score_sniah(output, gold),
    score_lenient=lambda output, gold, **_: score_sniah(output, gold),  # the metric is already lenient
    split="no instructions; question = 'What is the special magic number for KEY ...'",
    options=("lengths", "depths", "per_cell", "seed", "unit"),
))
