"""specialisation: kept sets, Jaccard overlap against hand-computed answers, the usage heatmap."""

import random

import pytest

from emo_slice.errors import UsageError
from emo_slice.slicing.select import choose_experts
from emo_slice.slicing.specialisation import jaccard, kept_sets, overlap, usage_heatmap


def _profile(*layers, method="mean-prob"):
    return {"layers": [{"layer": l, "scores": {method: list(s)}} for l, s in enumerate(layers)]}


# three domains, two layers, five routed experts; top 2 kept per layer (worked out by hand below)
CODE = _profile([0.9, 0.1, 0.8, 0.0, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5])  # {0, 2}, {3, 4}
MATH = _profile([0.1, 0.9, 0.8, 0.2, 0.0], [0.5, 0.4, 0.3, 0.2, 0.1])  # {1, 2}, {0, 1}
PROSE = _profile([0.3, 0.3, 0.3, 0.3, 0.1], [0.0, 0.0, 0.9, 0.8, 0.0])  # ties -> lower id: {0, 1}, {2, 3}


def test_kept_sets_by_hand():
    assert kept_sets(CODE, 2) == [{0, 2}, {3, 4}]
    assert kept_sets(MATH, 2) == [{1, 2}, {0, 1}]
    assert kept_sets(PROSE, 2) == [{0, 1}, {2, 3}]
    assert kept_sets(CODE, 1) == [{0}, {4}]


def test_jaccard_by_hand():
    assert jaccard({0, 2}, {1, 2}) == pytest.approx(1 / 3)
    assert jaccard({0, 1, 2}, {1, 2, 3}) == pytest.approx(2 / 4)
    assert jaccard({3, 4}, {0, 1}) == 0.0
    assert jaccard({5}, {5}) == 1.0
    assert jaccard(set(), set()) == 1.0


def test_overlap_by_hand():
    r = overlap({"math": MATH, "code": CODE, "prose": PROSE}, 2)
    # layer 0: code{0,2} math{1,2} -> 1/3; code{0,2} prose{0,1} -> 1/3; math{1,2} prose{0,1} -> 1/3
    # layer 1: code{3,4} math{0,1} -> 0;   code{3,4} prose{2,3} -> 1/3; math{0,1} prose{2,3} -> 0
    want = {"code|math": [1 / 3, 0.0], "code|prose": [1 / 3, 1 / 3], "math|prose": [1 / 3, 0.0]}
    assert r["pairs"].keys() == want.keys()
    for key, values in want.items():
        assert r["pairs"][key] == pytest.approx(values), key
    assert r["per_layer"] == pytest.approx([1 / 3, 1 / 9])
    assert r["mean"] == pytest.approx((1 / 3 + 1 / 9) / 2)
    assert r["routed_kept"] == 2 and r["method"] == "mean-prob"
    same = overlap({"a": CODE, "b": CODE}, 3)
    assert same["per_layer"] == [1.0, 1.0] and same["mean"] == 1.0


def test_overlap_other_method_and_refusal():
    a = _profile([1, 0, 0, 5], method="frequency")
    b = _profile([0, 0, 2, 5], method="frequency")
    assert overlap({"a": a, "b": b}, 2, method="frequency")["per_layer"] == pytest.approx([1 / 3])
    with pytest.raises(UsageError, match="at least two domains"):
        overlap({"only": CODE}, 2)


@pytest.mark.parametrize("n_routed,n_shared,keep", [(8, 1, 4), (8, 1, 2), (16, 2, 7), (5, 1, 5)])
def test_kept_sets_match_choose_experts(n_routed, n_shared, keep):
    rng = random.Random(n_routed * 100 + keep)
    layers = [[rng.choice([0.0, 0.25, 0.5, rng.random()]) for _ in range(n_routed)] for _ in range(3)]
    sets = kept_sets(_profile(*layers), keep - n_shared)
    shared = set(range(n_routed, n_routed + n_shared))
    for l, scores in enumerate(layers):
        chosen = choose_experts(scores, n_routed, n_shared, keep, "mean-prob", layer=l)
        assert sets[l] == set(chosen) - shared
        assert len(sets[l]) == keep - n_shared


def test_usage_heatmap_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    models = {"emo": {"code": CODE, "math": MATH}, "dense": {"code": MATH, "math": PROSE}}
    out = tmp_path / "usage.png"
    assert usage_heatmap(models, out) == out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["usage.png"]  # no temporary left
