"""OOLONG-synth (labelled records aggregated over long windows): loader and official scorer."""
from rlm_rig.experiments.datasets.oolong_synth.load import HF_REPO, load_oolong_synth
from rlm_rig.experiments.datasets.oolong_synth.score import score_oolong_synth, score_oolong_synth_lenient
from rlm_rig.experiments.datasets.registry import Dataset, register


def _needs_type(scorer):  # synth scores depend on the row's answer type
    def score(output, gold, *, answer_type=None):
        if not answer_type:
            raise ValueError("oolong-synth scoring needs the row's answer_type (e.g. 'ANSWER_TYPE.NUMERIC')")
        return scorer(output, str(gold), answer_type)
    return score


register(Dataset(
    name="oolong-synth",
    aliases=("oolong_synth", "synth", "oolongbench/oolong-synth"),
    load=lambda source, **kw: load_oolong_synth(source or HF_REPO, **kw),
    score=_needs_type(score_oolong_synth),
    score_lenient=_needs_type(score_oolong_synth_lenient),
    split="instructions = context_window_text up to the first `Date: ... ||` record; question = the row's "
          "question (it carries the 'Label: answer' format)",
    options=("context_len", "subset"),
))
