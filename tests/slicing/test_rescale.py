"""Routing-mass rescaling: the factor is the profile's router probability held by the kept routed experts, the
rescaled slice is the plain slice with exactly those down projections scaled, and merging divides it out."""

import dataclasses

import pytest
import torch

from emo_slice.errors import UsageError
from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.model.hf_names import EXPERT_KEY
from emo_slice.model.presets import preset
from emo_slice.slicing.extract import MANIFEST, extract
from emo_slice.slicing.merge import MergeRecipe, merge
from emo_slice.slicing.profile import profile_model
from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.slicing.rescale import renormalises, rescale, routing_mass
from emo_slice.slicing.select import SlicePlan, plan_slice


def _profile(cfg, seed=0) -> dict:
    """A profile's shape with random mean-prob scores (each layer's routed probabilities sum to 1)."""
    g = torch.Generator().manual_seed(seed)
    R = cfg.num_experts - cfg.num_shared_experts
    layers = []
    for _ in range(cfg.num_hidden_layers):
        p = torch.rand(R, generator=g, dtype=torch.float64)
        layers.append({"scores": {"mean-prob": (p / p.sum()).tolist()}})
    return {"layers": layers}


def test_factor_is_the_kept_experts_probability_where_at_most_top_k_are_kept():
    cfg = preset("tiny")  # 9 experts (8 routed + 1 shared), top 3 counting the shared one
    prof, other = _profile(cfg, 0), _profile(cfg, 1)
    kept = [[1, 5, 8], [0, 2, 3, 4, 8]]  # 3 <= top-k in layer 0; 5 > top-k in layer 1
    by_hand = [
        sum(p["layers"][l]["scores"]["mean-prob"][e] for e in kept[l][:-1]) for p in (prof, other) for l in (0, 1)
    ]
    assert routing_mass(cfg, kept, [prof], "auto") == [by_hand[0], None]
    assert routing_mass(cfg, kept, [prof], "on") == [by_hand[0], by_hand[1]]
    # a composed slice: the mean over its profiles
    assert routing_mass(cfg, kept, [prof, other], "on") == [
        (by_hand[0] + by_hand[2]) / 2,
        (by_hand[1] + by_hand[3]) / 2,
    ]
    assert routing_mass(cfg, kept, [prof], "off") == [None, None]
    assert routing_mass(cfg, kept, [], "on") == [None, None]  # no profile: nothing measured, nothing scaled
    every = [list(range(9))] * 2
    assert routing_mass(cfg, every, [prof], "on") == [None, None]  # every routed expert kept: the full layer
    with pytest.raises(UsageError, match="rescale='sometimes'"):
        routing_mass(cfg, kept, [prof], "sometimes")


def test_families_that_renormalise_are_left_alone():
    tiny = preset("tiny")
    assert not renormalises(tiny)
    mixtral = dataclasses.replace(tiny, routing="topk-softmax", num_shared_experts=0)
    qwen3 = dataclasses.replace(tiny, num_shared_experts=0, norm_topk_prob=True)
    olmoe = dataclasses.replace(tiny, num_shared_experts=0, norm_topk_prob=False)
    kept = [[1, 5], [0, 2]]
    for cfg in (mixtral, qwen3):
        assert renormalises(cfg) and routing_mass(cfg, kept, [_profile(cfg)], "on") == [None, None]
    assert not renormalises(olmoe) and None not in routing_mass(olmoe, kept, [_profile(olmoe)], "on")


@pytest.fixture(scope="module")
def sliced(tmp_path_factory):
    root = tmp_path_factory.mktemp("rescale")
    full = random_checkpoint(root / "full", "tiny", seed=5)
    calib = root / "calib.txt"
    calib.write_text("def f(x):\n    return x * 2\n" * 6)
    prof = profile_model(full, ProfileSettings(examples=str(calib)))
    ckpt = Checkpoint(full)
    plain = plan_slice(ckpt, 3, profile=prof)
    scaled = rescale(plan_slice(ckpt, 3, profile=prof), ckpt.config, [prof], "auto")
    extract(full, plain, root / "plain")
    manifest = extract(full, scaled, root / "scaled")
    return root, full, prof, plain, scaled, manifest


def _tensors(folder) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


def test_rescaled_slice_is_the_plain_slice_with_the_routed_down_projections_scaled(sliced):
    root, full, prof, plain, scaled, manifest = sliced
    cfg = Checkpoint(full).config
    factors = [sum(prof["layers"][l]["scores"]["mean-prob"][e] for e in plain.kept[l][:-1]) for l in range(2)]
    assert scaled.kept == plain.kept and scaled.scale == pytest.approx(factors, rel=1e-12)
    assert manifest["rescale"]["factors"] == scaled.scale == manifest["rescale"]["total"]
    a, b = _tensors(root / "plain"), _tensors(root / "scaled")
    assert a.keys() == b.keys()
    n_scaled = 0
    for name, t in a.items():
        m = EXPERT_KEY.match(name)
        routed = m and int(m.group(2)) < len(plain.kept[int(m.group(1))]) - cfg.num_shared_experts
        if routed and name.endswith("down_proj.weight"):
            assert torch.equal(b[name], (t.float() * scaled.scale[int(m.group(1))]).to(t.dtype)), name
            n_scaled += 1
        else:
            assert torch.equal(b[name], t), name  # router rows, the shared expert, gate/up, attention: as sliced
    assert n_scaled == 2 * 2  # two routed experts kept in each of two layers


def test_a_slice_keeping_every_expert_is_the_full_model(sliced, tmp_path):
    root, full, prof, *_ = sliced
    ckpt = Checkpoint(full)
    plan = rescale(plan_slice(ckpt, 9, profile=prof), ckpt.config, [prof], "on")
    assert plan.scale is None
    extract(full, plan, tmp_path / "all")
    mine, theirs = _tensors(tmp_path / "all"), _tensors(full)
    assert all(torch.equal(mine[n], theirs[n]) for n in theirs)


def test_merging_a_rescaled_slice_divides_the_factor_out(sliced, tmp_path):
    root, full, *_ = sliced
    record = merge(full, root / "scaled", tmp_path / "merged", MergeRecipe())
    assert record["routing_factors_divided_out"]
    mine, theirs = _tensors(tmp_path / "merged"), _tensors(full)
    for name, t in theirs.items():
        assert torch.allclose(mine[name], t, rtol=1e-6, atol=0), name
    # a slice's manifest with a damaged factor list is refused, nothing written
    import json

    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(root / "scaled", bad)
    m = json.loads((bad / MANIFEST).read_text())
    m["rescale"]["factors"] = ["x", 1]
    (bad / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(Exception, match="rescale record is damaged"):
        merge(full, bad, tmp_path / "m2", MergeRecipe())
    assert not (tmp_path / "m2").exists()


def test_plain_plans_carry_no_factor(sliced):
    *_, plain, _, _ = sliced
    assert plain.scale is None and SlicePlan([[0]], "experts", 1).scale is None


def test_extract_rescales_by_default_at_most_top_k_and_says_so(sliced, tmp_path):
    """The command line: `--rescale auto` (the default) with --examples at K <= top-k writes the same factors the
    library computes and prints them; `--rescale off` writes the plain slice; above top-k auto leaves it plain."""
    import json

    from conftest import invoke

    root, full, prof, plain, scaled, _ = sliced
    calib = root / "calib.txt"
    r = invoke("extract", full, "--keep", "3", "--examples", calib, "--out", tmp_path / "auto")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "auto" / MANIFEST).read_text())
    assert manifest["rescale"]["factors"] == pytest.approx(scaled.scale, rel=1e-12)
    assert "rescaled (--rescale)" in r.stdout and f"{scaled.scale[0]:.3f}" in r.stdout
    r = invoke("extract", full, "--keep", "3", "--examples", calib, "--rescale", "off", "--out", tmp_path / "off")
    assert r.returncode == 0 and "rescaled" not in r.stdout
    assert json.loads((tmp_path / "off" / MANIFEST).read_text())["rescale"] is None
    off, mine = _tensors(tmp_path / "off"), _tensors(root / "plain")
    assert all(torch.equal(off[n], mine[n]) for n in mine)
    r = invoke("extract", full, "--keep", "5", "--examples", calib, "--out", tmp_path / "five")  # 5 > top-k 3
    assert r.returncode == 0 and json.loads((tmp_path / "five" / MANIFEST).read_text())["rescale"] is None


def test_rescale_on_without_a_profile_is_one_line(sliced, tmp_path):
    from conftest import assert_one_line_error, invoke

    root, full, *_ = sliced
    with pytest.raises(UsageError, match="rescale=on"):
        rescale(SlicePlan([[0, 8], [1, 8]], "experts", 2), Checkpoint(full).config, [], "on")
    r = invoke("extract", full, "--keep", "3", "--method", "random", "--rescale", "on", "--out", tmp_path / "s")
    assert_one_line_error(r, "--rescale on needs")
    assert not (tmp_path / "s").exists()
