"""Composed slices: union (round robin by rank) and sum (of normalised scores) over several domains' profiles."""

import copy
import json

import pytest
from conftest import assert_one_line_error, invoke

from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.compose import compose_plan, sum_order, union_order
from emo_slice.slicing.profile_file import save_profile


@pytest.fixture(scope="module")
def base_profile(tiny_ckpt, tmp_path_factory):
    """A real profile of the tiny checkpoint (8 routed + 1 shared experts, 2 layers), to edit the scores of."""
    from emo_slice.slicing.profile import ProfileSettings, profile_model

    text = tmp_path_factory.mktemp("calib") / "doc.txt"
    text.write_text("def f(x):\n    return x + 1\n" * 4)
    return profile_model(tiny_ckpt, ProfileSettings(examples=str(text)))


def domain(base: dict, favoured: list[int], path) -> str:
    """A profile whose mean-prob ranks `favoured` first (in that order) in every layer, saved to path."""
    p = copy.deepcopy(base)
    for layer in p["layers"]:
        R = layer["routed"]
        s = [0.01] * R
        for rank, e in enumerate(favoured):
            s[e] = 0.5 / (rank + 1)
        layer["scores"]["mean-prob"] = s
    save_profile(p, path)
    return str(path)


def test_union_is_round_robin_by_rank():
    # a:[0,1,5,...] b:[1,2,...]: round 1 takes 0 (a) and 1 (b); round 2: a's 1 is taken, b takes 2
    order, by = union_order([[0, 1, 5, 2, 3], [1, 2, 0, 3, 5]])
    assert order[:3] == [0, 1, 2] and by[:3] == [0, 1, 1]
    assert sorted(order) == [0, 1, 2, 3, 5]


def test_sum_normalises_each_domain_and_breaks_ties_to_lower_id():
    # b's scores are 100x larger but weigh the same once normalised: a's 0.5 beats b's 40 (0.4); 0 and 3 tie
    order, by, total = sum_order([[0.5, 0.0, 0.0, 0.5], [0.0, 60.0, 40.0, 0.0]])
    assert order == [1, 0, 3, 2] and by == [1, 0, 0, 1]
    assert total == pytest.approx([0.5, 0.6, 0.4, 0.5])


def test_union_of_disjoint_domains_keeps_both_sets(tiny_ckpt, base_profile, tmp_path):
    a = domain(base_profile, [0, 1, 2], tmp_path / "a.json")
    b = domain(base_profile, [5, 6, 7], tmp_path / "b.json")
    r = invoke("extract", tiny_ckpt, "--profile", a, "--profile", b, "--keep", 7, "--out", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "s" / "slice.json").read_text())
    assert m["kept_experts"] == [[0, 1, 2, 5, 6, 7, 8]] * 2  # both domains' three experts, shared last
    comp = m["profile"]["composition"]
    assert comp["rule"] == "union" and [d["source"] for d in comp["domains"]] == [a, b]
    assert [d["contributed"] for d in comp["domains"]] == [[[0, 1, 2]] * 2, [[5, 6, 7]] * 2]
    assert "contributed" in r.stdout


def test_k_equal_to_the_union_reproduces_it(tiny_ckpt, base_profile, tmp_path):
    # top-3 sets {0,1,2} and {2,3,4} overlap: their union has 5 experts, so K = 5 + 1 shared reproduces it
    profiles = [
        json.loads(open(domain(base_profile, fav, tmp_path / f"{i}.json")).read())
        for i, fav in enumerate(([0, 1, 2, 6], [2, 3, 4, 7]))
    ]
    ckpt = Checkpoint(tiny_ckpt)
    plan = compose_plan(ckpt, 6, profiles, ["a", "b"], "mean-prob", "union")
    assert plan.kept == [[0, 1, 2, 3, 4, 8]] * 2
    assert plan.profile["composition"]["domains"][1]["contributed"] == [[2, 3, 4]] * 2  # b's 2 came in round 1
    # one expert fewer stops inside round 3: a's third (2) was taken by b, so b's third (4) is what goes
    assert compose_plan(ckpt, 5, profiles, ["a", "b"], "mean-prob", "union").kept == [[0, 1, 2, 3, 8]] * 2


def test_sum_rule_records_its_normalisation(tiny_ckpt, base_profile, tmp_path):
    a = domain(base_profile, [0, 1, 2], tmp_path / "a.json")
    b = domain(base_profile, [2, 3], tmp_path / "b.json")
    r = invoke(
        "extract",
        tiny_ckpt,
        "--profile",
        a,
        "--profile",
        b,
        "--keep",
        3,
        "--compose",
        "sum",
        "--out",
        tmp_path / "s",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["kept_experts"][0] == [0, 2, 8]  # 2 is second for a and first for b: the largest sum with a's 0
    assert "divided by their sum" in m["profile"]["composition"]["normalisation"]


@pytest.mark.parametrize(
    "extra, needles",
    [
        (["--compose", "max"], ["--compose 'max'", "union"]),
        (["--method", "random"], ["--method random", "compose"]),
        (["--per-layer"], ["--per-layer"]),
    ],
)
def test_bad_compositions_are_refused(tiny_ckpt, base_profile, tmp_path, extra, needles):
    a = domain(base_profile, [0], tmp_path / "a.json")
    b = domain(base_profile, [1], tmp_path / "b.json")
    r = invoke("extract", tiny_ckpt, "--profile", a, "--profile", b, "--keep", 4, "--out", tmp_path / "s", *extra)
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "s").exists()


def test_compose_needs_several_domains(tiny_ckpt, base_profile, tmp_path):
    a = domain(base_profile, [0], tmp_path / "a.json")
    r = invoke("extract", tiny_ckpt, "--profile", a, "--keep", 4, "--compose", "union", "--out", tmp_path / "s")
    assert_one_line_error(r, "--compose", "once per domain")
