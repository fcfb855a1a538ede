"""OOLONG-real (Critical Role D&D transcripts; roll and spell counts): loader and official scorer."""
from rlm_rig.experiments.datasets.oolong_real.load import HF_REPO, load_oolong_real
from rlm_rig.experiments.datasets.oolong_real.score import score_oolong_real, score_oolong_real_lenient
from rlm_rig.experiments.datasets.registry import Dataset, register

register(Dataset(
    name="oolong-real",
    aliases=("oolong_real", "real", "dnd", "oolongbench/oolong-real"),
    load=lambda source, **kw: load_oolong_real(source or HF_REPO, **kw),
    score=lambda output, gold, **_: score_oolong_real(output, gold),
    score_lenient=lambda output, gold, **_: score_oolong_real_lenient(output, gold),
    split="instructions = context_window_text up to the first [START OF EPISODE] (prompt with \\boxed{} format "
          "+ player/character map); question = the row's question",
))
