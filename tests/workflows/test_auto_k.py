"""Automatic K: the smallest K meeting a score target (bisection) or a routing-mass target (from the profile)."""

import copy
import json
from types import SimpleNamespace

import pytest
from conftest import assert_one_line_error, invoke

from emo_slice.slicing.profile_file import save_profile
from emo_slice.workflows import autok, scoring


class FakeConfig:
    num_shared_experts, num_hidden_layers = 1, 2

    def experts_in_layer(self, l):
        return 33


FAKE = SimpleNamespace(config=FakeConfig())


@pytest.mark.parametrize("answer", [2, 3, 17, 32, 33])
def test_bisection_returns_the_smallest_k_meeting_the_target(answer):
    """share kept rises with K and first reaches 0.99 at `answer` (33: only the full model does)."""
    calls = []

    def score(k):
        calls.append(k)
        return (0.99 if k >= answer else 0.5 + k / 100), {}

    k, record = autok.by_score(FAKE, score, 0.99)
    assert k == answer
    assert len(calls) <= 5 and 33 not in calls  # log2(32) evaluations; the full model is never extracted
    assert [r["keep"] for r in record["tried"]] == sorted(calls)
    assert all(r["meets_target"] == (r["keep"] >= answer) for r in record["tried"])
    assert "does not fall as K grows" in record["assumption"]


def test_a_share_that_cannot_be_computed_never_meets_the_target():
    k, _ = autok.by_score(FAKE, lambda k: (None, {}), 0.5)
    assert k == 33


@pytest.fixture(scope="module")
def profile(tiny_ckpt, tmp_path_factory):
    """A real profile of the tiny checkpoint (8 routed + 1 shared, 2 layers) with constructed mean-prob scores:
    layer 0 holds 80% of its mass in 2 experts, layer 1 needs 4 for 80% (K = 4 + 1 shared = 5)."""
    from emo_slice.slicing.profile import ProfileSettings, profile_model

    folder = tmp_path_factory.mktemp("auto")
    (folder / "doc.txt").write_text("x = [i * i for i in range(10)]\n" * 3)
    p = copy.deepcopy(profile_model(tiny_ckpt, ProfileSettings(examples=str(folder / "doc.txt"))))
    p["layers"][0]["scores"]["mean-prob"] = [0.5, 0.3, 0.05, 0.05, 0.04, 0.03, 0.02, 0.01]
    p["layers"][1]["scores"]["mean-prob"] = [0.02, 0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.03]
    return save_profile(p, folder / "p.json")


def test_target_mass_picks_the_smallest_k_holding_it_in_every_layer(tiny_ckpt, profile, tmp_path):
    r = invoke(
        "extract", tiny_ckpt, "--keep", "auto", "--target-mass", "0.79", "--profile", profile, "--out", tmp_path / "s"
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "s" / "slice.json").read_text())
    assert m["keep"] == 5 and m["kept_experts"][1] == [1, 2, 3, 4, 8]
    rec = m["profile"]["auto_keep"]
    assert rec["chosen"] == 5 and [t["keep"] for t in rec["tried"]] == [2, 3, 4, 5]
    assert rec["tried"][-1]["mass_held_min"] == pytest.approx(0.8) and rec["tried"][-1]["worst_layer"] == 1
    assert "chose K = 5" in r.stdout


def test_target_scores_held_out_items_and_picks_the_known_smallest_k(tiny_ckpt, tmp_path, monkeypatch):
    """Slices are scored by a stand-in that keeps 99% from K = 4 on: auto picks 4, never scores a calibration
    item, and records the split."""
    items = [{"id": f"q{i}", "context": f"{i} + 1 =", "choices": [" no", " yes"], "label": 1} for i in range(8)]
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(it) + "\n" for it in items))
    seen = []

    def fake_evaluate(model, tasks, lm, settings):
        seen.append([it.id for t in tasks for it in t.items])  # the held-out task, handed over as a Task object
        return {"results": {"t": {"acc_per_char": 1.0}}, "models": {"model": {"weight_bytes": 100}}, "tasks": {}}

    def fake_score(ckpt, plan, path, full, scored, *a, **k):
        fake_evaluate(path, *scored)
        share = 0.99 if plan.keep >= 4 else 0.9
        return {"bytes": plan.keep, "share_of_bytes": plan.keep / 9, "kept": {"t": {"acc_per_char": share}}}

    monkeypatch.setattr(scoring, "evaluate", fake_evaluate)
    monkeypatch.setattr(autok, "score_slice", fake_score)
    r = invoke(
        "extract",
        tiny_ckpt,
        "--keep",
        "auto",
        "--target",
        "0.99",
        "--task",
        task,
        "--shots",
        "3",
        "--out",
        tmp_path / "s",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    rec = m["profile"]["auto_keep"]
    assert m["keep"] == rec["chosen"] == 4
    split = rec["held_out"][0]
    calib = set(split["calibration_ids"])
    assert len(calib) == 3 and split["held_out"] == 5
    assert calib == set(rec["calibration"][0]["ids"])
    assert all(set(ids) == {it["id"] for it in items} - calib for ids in seen)  # the full model and each slice
    assert [t["keep"] for t in rec["tried"]] == [3, 4, 5]
    assert rec["metrics"] == {"t": ["acc_per_char"]}


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--keep", "auto"], ["--keep auto needs one of --target"]),
        (["--keep", "auto", "--target", "0.9", "--target-mass", "0.9"], ["--keep auto needs one of"]),
        (["--keep", "4", "--target", "0.9"], ["--keep auto"]),
        (["--keep", "auto", "--target", "0.9"], ["--task"]),
        (["--keep", "auto", "--target-mass", "1.5"], ["--target-mass 1.5", "(0, 1]"]),
        (["--keep", "auto", "--target-mass", "0.9", "--method", "random"], ["--keep auto ranks"]),
    ],
)
def test_bad_auto_requests_are_refused(tiny_ckpt, profile, tmp_path, args, needles):
    r = invoke("extract", tiny_ckpt, "--profile", profile, *args, "--out", tmp_path / "s")
    assert_one_line_error(r, *needles)
    assert not (tmp_path / "s").exists()
