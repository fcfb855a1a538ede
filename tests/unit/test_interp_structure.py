"""Fast tests (no model): the structure-vs-noise measures on synthetic heatmaps, and the line-swap
corruptions that build exact k±1 counting pairs."""
from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from rlm_rig.interp.config import InterpConfig
from rlm_rig.interp.data.rolls import RollQuery, corrupt_line_add, corrupt_line_remove, count_roll_lines
from rlm_rig.interp.stats.heatmap_structure import Heatmap, focus_shares, focus_table, heatmap_correlation, heatmap_from_rows

POS = ["chunk_before", "edit", "edit_next", "chunk_after", "post_chunk", "last"]
LAYERS = list(range(0, 30, 3))
NTOK = np.array([60.0, 8.0, 1.0, 80.0, 40.0, 1.0])


def planted(rng: np.random.Generator, noise: float = 0.05) -> Heatmap:
    """The textbook picture: the edit carries the count early, the last position late."""
    v = rng.normal(0, noise, (len(LAYERS), len(POS)))
    for i, li in enumerate(LAYERS):
        w = li / LAYERS[-1]
        v[i, 1] += 1 - w
        v[i, 5] += w
    v[:, 0] = 0.0  # chunk_before: 0 by causality
    return Heatmap(LAYERS, POS, v, NTOK)


def noise(rng: np.random.Generator) -> Heatmap:
    return Heatmap(LAYERS, POS, rng.normal(0, 0.3, (len(LAYERS), len(POS))), NTOK)


def test_planted_structure_is_detected():
    table = focus_table(planted(np.random.default_rng(0)))
    overall = table[table["layer"] == "all"].iloc[0]
    assert overall["uniform_groups"] == pytest.approx(2 / 6)
    assert overall["uniform_tokens"] == pytest.approx(9 / 190)
    assert overall["share"] > 0.85 and overall["enrichment"] > 2.5
    assert overall["p_value"] == pytest.approx(1 / 15)  # the smallest exact p with 2 of 6 columns
    per_layer = table[table["layer"] != "all"]
    assert (per_layer["share"] > per_layer["uniform_groups"]).all()


def test_pure_noise_is_not_detected_and_p_is_calibrated():
    rng = np.random.default_rng(1)
    shares, hits = [], 0
    for _ in range(300):
        overall = focus_shares(noise(rng))[-1]
        shares.append(overall.share)
        hits += overall.p_value <= 1 / 15 + 1e-9
    assert abs(np.mean(shares) - 2 / 6) < 0.02  # noise gets the uniform share over groups ...
    assert 0.02 < hits / 300 < 0.13  # ... and the minimal p as often as chance (1/15), not more


def test_seed_correlation_separates_structure_from_noise():
    rng = np.random.default_rng(2)
    same = heatmap_correlation(planted(rng, 0.1), planted(rng, 0.1))
    assert same["pearson"] > 0.8 and same["spearman"] > 0.5  # ranks of the many ~0 cells are noise
    assert same["n_cells_varying"] == len(LAYERS) * (len(POS) - 1)  # constant chunk_before left out
    rs = [heatmap_correlation(noise(rng), noise(rng))["pearson"] for _ in range(100)]
    assert abs(np.mean(rs)) < 0.05 and np.quantile(np.abs(rs), 0.9) < 0.35


def test_heatmap_from_rows_averages_pairs_and_drops_sanity_groups():
    rows = []
    for pair, scale in (("a", 1.0), ("b", 3.0)):
        for li in (0, 5):
            for p, n in (("edit", 4), ("last", 1), ("all", 50)):
                rows.append(dict(pair=pair, component="resid", direction="denoise", layer=li, position=p,
                                 n_positions=n * scale, normalized=scale * (li + 1)))
    rows.append(dict(pair="a", component="attn", direction="denoise", layer=0, position="edit", n_positions=4,
                     normalized=99.0))
    hm = heatmap_from_rows(pd.DataFrame(rows))
    assert hm.positions == ["edit", "last"] and hm.layers == [0, 5]
    assert hm.cell(5, "edit") == pytest.approx(12.0) and hm.n_tokens.tolist() == [8.0, 2.0]
    with pytest.raises(ValueError, match="focus"):
        focus_shares(hm, focus=("edit", "edit_next"))
    with pytest.raises(ValueError, match="no rows"):
        heatmap_from_rows(pd.DataFrame(rows), direction="noise")


def test_kl_recovery_is_bounded_and_median_resists_outlier_pairs():
    from rlm_rig.interp.stats.heatmap_structure import kl_recovery

    rows = pd.DataFrame(dict(kl_from_corrupt=[0.0, 2.0, 1.0, 0.0], kl_from_clean=[3.0, 0.0, 1.0, 0.0]))
    rec = kl_recovery(rows)
    assert rec[:3].tolist() == [0.0, 1.0, 0.5] and np.isnan(rec[3])
    # one pair with a tiny logit gap: normalized explodes; the median and kl_recovery do not
    base = dict(component="resid", direction="denoise", layer=0, position="edit", n_positions=1)
    long = pd.DataFrame([dict(base, pair=i, normalized=v, kl_from_corrupt=1.0, kl_from_clean=0.1)
                         for i, v in enumerate([0.9, 1.0, 1.1, -40.0])])
    assert heatmap_from_rows(long).cell(0, "edit") < -9
    assert heatmap_from_rows(long, agg="median").cell(0, "edit") == pytest.approx(0.95)
    assert heatmap_from_rows(long, metric="kl_recovery").cell(0, "edit") == pytest.approx(1 / 1.1)
    with pytest.raises(ValueError, match="agg"):
        heatmap_from_rows(long, agg="max")


# -- line-swap corruptions ---------------------------------------------------------------------------
CHUNK = "\n".join([
    "Matt: The goblin has 8 hit points left.",
    "Laura: I rolled a 17 on my stealth check.",
    "Sam: These dice are cursed, I swear.",
    "Travis: Okay, I rolled a 4 to hit.",
    "Laura: I want to talk to the bartender.",
    "Liam: I hide behind the barrels.",
])


def _changed(a: str, b: str) -> list[int]:
    return [i for i, (x, y) in enumerate(zip(a.split("\n"), b.split("\n"))) if x != y]


@pytest.mark.parametrize("fn,delta", [(corrupt_line_remove, -1), (corrupt_line_add, +1)])
def test_line_swaps_move_the_count_by_one_and_keep_speakers(fn, delta):
    edits = list(fn(CHUNK, random.Random(0)))
    assert edits
    for e in edits:
        assert count_roll_lines(e.text) == 2 + delta
        (i,) = _changed(CHUNK, e.text)  # exactly one line changes ...
        old, new = CHUNK.split("\n")[i], e.text.split("\n")[i]
        assert old.split(": ")[0] == new.split(": ")[0]  # ... and it keeps its speaker
        assert CHUNK[e.span[0]:e.span[1]] == old.split(": ", 1)[1]


def test_line_add_renumbers_donors_and_respects_filters():
    adds = [e.text for e in corrupt_line_add(CHUNK, random.Random(0))]
    assert any("rolled a 17 on my stealth" not in t.split("\n")[i] for t in adds for i in _changed(CHUNK, t))
    laura = RollQuery(speaker="Laura")
    for e in corrupt_line_add(CHUNK, random.Random(0), laura):
        (i,) = _changed(CHUNK, e.text)
        assert e.text.split("\n")[i].startswith("Laura:")
        assert count_roll_lines(e.text, laura) == 2
    for e in corrupt_line_add(CHUNK, random.Random(0), RollQuery(value=17)):
        assert count_roll_lines(e.text, RollQuery(value=17)) == 2  # the donor keeps the filtered value
    assert list(corrupt_line_remove("Matt: Nothing happens.", random.Random(0))) == []


def test_config_accepts_line_corruptions():
    assert InterpConfig(corruptions=["line_remove", "line_add"]).corruptions == ["line_remove", "line_add"]
