"""`emo-slice stability`: Jaccard of kept sets, checked against kept sets `profile` chooses on each subset and
overlaps counted by hand."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, invoke

from emo_slice.analysis.stability import compare, jaccard, orders, parse_sizes
from emo_slice.errors import UsageError

KEEP = 5  # of 8 routed + 1 shared: 4 routed kept


def test_jaccard_by_hand():
    assert jaccard([1, 2, 3], [2, 3, 4]) == 2 / 4
    assert jaccard([0, 5], [0, 5]) == 1.0
    assert jaccard([0, 1], [2, 3]) == 0.0
    assert jaccard([], []) == 1.0


def test_calib_sizes():
    assert parse_sizes("100,1, 5,10,5") == [1, 5, 10, 100]
    for bad in ("0,5", "a,b", ""):
        with pytest.raises(UsageError):
            parse_sizes(bad)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    rng = np.random.default_rng(1)
    words = "alpha beta gamma delta 12 + 7 = 19 def return class import".split()
    p = tmp_path_factory.mktemp("stab") / "ex.jsonl"
    p.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 25))}) + "\n" for _ in range(9)))
    return p


def _profile_kept(ckpt, texts, tmp_path, name):
    """The routed experts profile + choose_experts keep from these texts (mean-prob), per layer."""
    from emo_slice.slicing.profile import ProfileSettings, profile_model
    from emo_slice.slicing.select import choose_experts

    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prof = profile_model(ckpt, ProfileSettings(examples=str(p), device="cpu"))
    out = []
    for layer in prof["layers"]:
        kept = choose_experts(layer["scores"]["mean-prob"], layer["routed"], layer["shared"], KEEP, "mean-prob")
        out.append([e for e in kept if e < layer["routed"]])
    return out


def test_stability_equals_profile_on_each_subset_and_hand_counted_jaccard(tiny_ckpt, examples, tmp_path):
    out = tmp_path / "stab.json"
    r = invoke("stability", tiny_ckpt, "--examples", examples, "--keep", KEEP, "--calib-n", "1,3,9", "--seeds", 2,
               "--device", "cpu", "--out", out)  # fmt: skip
    assert r.returncode == 0, (r.stderr, r.exception)
    rep = json.loads(out.read_text())
    texts = [json.loads(line)["text"] for line in examples.read_text().splitlines()]
    perms = [torch.randperm(9, generator=torch.Generator().manual_seed(s)).tolist() for s in range(2)]
    assert orders(9, 2) == perms
    want = {(n, s): _profile_kept(tiny_ckpt, [texts[i] for i in perms[s][:n]], tmp_path, f"{n}-{s}") for n in (1, 3, 9)
            for s in range(2)}  # fmt: skip
    ref = want[(9, 0)]
    assert rep["reference"]["kept"] == ref
    for row in rep["sizes"]:
        n = row["n"]
        assert row["kept"] == [want[(n, 0)], want[(n, 1)]]
        for layer in range(len(ref)):
            by_hand = []
            for s in range(2):
                a, b = set(want[(n, s)][layer]), set(ref[layer])
                by_hand.append(len(a & b) / len(a | b))
            assert row["jaccard_vs_reference"][layer] == pytest.approx(sum(by_hand) / 2, abs=1e-6)
            a, b = set(want[(n, 0)][layer]), set(want[(n, 1)][layer])
            assert row["jaccard_across_seeds"][layer] == pytest.approx(len(a & b) / len(a | b), abs=1e-6)
    assert rep["sizes"][-1]["mean_jaccard_vs_reference"] == 1.0  # all 9 examples: every seed draws the same set
    assert rep["provenance"]["emo_slice_version"] and rep["model"]["fingerprint"]


def test_sizes_beyond_the_examples_are_capped():
    from emo_slice.analysis.stability import ExampleStats

    rng = np.random.default_rng(0)
    stats = ExampleStats(rng.random((4, 2, 6)), rng.random((4, 2, 6)), np.full(4, 10))
    res = compare(stats, [2, 50], 3, 3, "mean-prob")
    assert [r["n_effective"] for r in res["sizes"]] == [2, 4]
    assert res["sizes"][1]["mean_jaccard_across_seeds"] == 1.0


def test_stability_refuses_bad_options(tiny_ckpt, examples):
    r = invoke("stability", tiny_ckpt, "--examples", examples, "--keep", 5, "--calib-n", "0", "--device", "cpu")
    assert_one_line_error(r, "--calib-n")
    r = invoke("stability", tiny_ckpt, "--examples", examples, "--keep", 5, "--method", "reap", "--device", "cpu")
    assert_one_line_error(r, "--method")
    r = invoke("stability", tiny_ckpt, "--examples", examples, "--keep", 50, "--device", "cpu")
    assert_one_line_error(r, "--keep")
