"""profile: every score against a direct computation, greedy vs one pass, inputs, files, CLI."""

import json

import pytest
import torch
import torch.nn.functional as F

from emo_slice.errors import DataError, UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.slicing.extract import extract
from emo_slice.slicing.profile import ProfileSettings, profile_model
from emo_slice.slicing.profile_file import check_profile_matches, concentration, load_profile, save_profile
from emo_slice.slicing.select import plan_slice

TEXT = "The quick brown fox jumps over the lazy dog.\nPack my box with five dozen liquor jugs!\n"
DOCS = [TEXT * 3, "def f(x):\n    return x * 2\n", "Hello\x00world"]  # \x00 is the EOS byte: not counted


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    p = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    return p


def _direct_scores(ckpt_path, docs, max_length):
    """Scores computed the slow, obvious way: whole model, hooks, one token and one expert at a time."""
    model = load_model(ckpt_path)
    ck = Checkpoint(ckpt_path)
    cfg = ck.config
    k_routed = cfg.num_experts_per_tok - cfg.num_shared_experts
    caps = {}
    for l, layer in enumerate(model.model.layers):
        layer.pre_feedforward_layernorm.register_forward_hook(
            lambda m, i, o, l=l: caps.__setitem__(l, (i[0].reshape(-1, i[0].shape[-1]), o.reshape(-1, o.shape[-1])))
        )
        layer.mlp.register_forward_hook(
            lambda m, i, o, l=l: caps.__setitem__(("moe", l), o[0].reshape(-1, o[0].shape[-1]))
        )
    sums = [
        dict(
            prob=torch.zeros(8, dtype=torch.float64),
            count=torch.zeros(8, dtype=torch.float64),
            reap=torch.zeros(8, dtype=torch.float64),
            easy=torch.zeros(8, dtype=torch.float64),
        )
        for _ in range(2)
    ]
    n = 0
    for doc in docs:
        ids = list(doc.encode())
        for start in range(0, len(ids), max_length):
            row = torch.tensor([ids[start : start + max_length]])
            with torch.no_grad():
                model(row)
            valid = [t for t in range(row.shape[1]) if int(row[0, t]) not in (0, 1)]
            n += len(valid)
            for l in range(2):
                h, xn = caps[l]
                moe = caps[("moe", l)]
                gate = ck.get(f"model.layers.{l}.mlp.gate.weight")
                for t in valid:
                    p = torch.softmax((gate @ xn[t])[:8].double(), -1)
                    sums[l]["prob"] += p
                    w, top = torch.topk(p, k_routed)
                    y = h[t] + moe[t]
                    change = 1 - torch.dot(h[t].double(), y.double()) / (h[t].double().norm() * y.double().norm())
                    for wj, e in zip(w.tolist(), top.tolist()):
                        g = ck.get(f"model.layers.{l}.mlp.experts.{e}.gate_proj.weight")
                        u = ck.get(f"model.layers.{l}.mlp.experts.{e}.up_proj.weight")
                        d = ck.get(f"model.layers.{l}.mlp.experts.{e}.down_proj.weight")
                        out = d @ (F.silu(g @ xn[t]) * (u @ xn[t]))
                        sums[l]["count"][e] += 1
                        sums[l]["reap"][e] += wj * out.double().norm()
                        sums[l]["easy"][e] += wj * out.double().norm() * change
    out = []
    for s in sums:
        out.append(
            {
                "mean-prob": s["prob"] / n,
                "frequency": s["count"] / n,
                "count": s["count"],
                "reap": torch.where(s["count"] > 0, s["reap"] / s["count"].clamp(min=1), 0.0),
                "easy-ep": s["easy"],
            }
        )
    return out, n


def test_scores_match_direct_computation(tiny_ckpt, docs):
    prof = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs), max_length=40))
    want, n = _direct_scores(tiny_ckpt, DOCS, 40)
    assert prof["tokens"] == n == sum(len(d) for d in DOCS) - 1  # the EOS byte is not counted
    assert prof["inputs"]["rows"] > len(DOCS)  # long documents cut into rows, rows padded in batches
    for l in range(2):
        got = prof["layers"][l]["scores"]
        for key in ("mean-prob", "frequency", "count", "reap", "easy-ep"):
            assert torch.allclose(torch.tensor(got[key], dtype=torch.float64), want[l][key], rtol=1e-4, atol=1e-6), key
        assert sum(got["count"]) == 2 * n and abs(sum(got["mean-prob"]) - 1) < 1e-5


def test_statistics_come_from_the_forward_without_a_second_expert_pass(tiny_ckpt, docs, monkeypatch):
    """Profiling runs each routed expert once: the forward's own expert_mix, asked for the pair norms."""
    from emo_slice.model import modeling

    calls = []
    real = modeling.expert_mix

    def counting(*args, **kwargs):
        calls.append(kwargs.get("norms", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling, "expert_mix", counting)
    prof = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs), max_length=40))
    batches = prof["inputs"]["rows"]  # at most one batch per row; one expert_mix per batch and layer
    assert calls and all(calls) and len(calls) <= 2 * batches
    assert sum(prof["layers"][0]["scores"]["count"]) == 2 * prof["tokens"]


def test_greedy_agrees_on_layer0_and_scores_the_sliced_model(tiny_ckpt, docs, tmp_path):
    one = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs)))
    greedy = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs), greedy=True, keep="4", method="reap"))
    assert greedy["layers"][0] == one["layers"][0]
    kept0 = greedy["greedy"]["kept"][0]
    best = sorted(range(8), key=lambda e: -one["layers"][0]["scores"]["reap"][e])[:3]
    assert kept0 == sorted(best) + [8]
    # layer 1 of the greedy profile = layer 1 of a one-pass profile of the model with only layer 0 sliced
    ck = Checkpoint(tiny_ckpt)
    routed0 = ",".join(str(e) for e in kept0[:-1])
    extract(ck, plan_slice(ck, experts=f"{routed0};0,1,2,3,4,5,6,7", per_layer=True), tmp_path / "l0")
    half = profile_model(tmp_path / "l0", ProfileSettings(examples=str(docs)))
    for key in ("mean-prob", "count", "reap"):
        assert torch.allclose(
            torch.tensor(half["layers"][1]["scores"][key], dtype=torch.float64),
            torch.tensor(greedy["layers"][1]["scores"][key], dtype=torch.float64),
            atol=1e-6,
        )
    # extract from a greedy profile gives the greedy choice, and refuses another K
    plan = plan_slice(ck, "4", profile=greedy, method="reap")
    assert plan.kept == greedy["greedy"]["kept"]
    with pytest.raises(UsageError, match="--greedy"):
        plan_slice(ck, "5", profile=greedy, method="reap")
    with pytest.raises(UsageError, match="one-pass"):
        plan_slice(ck, "4", profile=greedy, method="reap", per_layer=True)


def test_multiple_choice_shots(tiny_ckpt, tmp_path):
    task = tmp_path / "task.jsonl"
    items = [
        {"id": i, "context": f"Q{i}: colour?\n", "choices": ["red", "blue", "green"], "label": i % 3} for i in range(6)
    ]
    task.write_text("".join(json.dumps(x) + "\n" for x in items))
    prof = profile_model(tiny_ckpt, ProfileSettings(examples=str(task), shots=2, seed=1))
    inp = prof["inputs"]
    assert inp["kind"] == "multiple-choice" and inp["shots"] == 2 and len(inp["ids"]) == 2
    chosen = [items[int(i)] for i in inp["ids"]]
    prompt = "".join(x["context"] + x["choices"][x["label"]] + "\n\n" for x in chosen)
    assert prof["tokens"] == len(prompt.encode())


def test_profile_file_roundtrip_and_checks(tiny_ckpt, fixtures, docs, tmp_path):
    prof = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs)))
    path = save_profile(prof, tmp_path / "p.json")
    back = load_profile(path)
    assert back["layers"] == prof["layers"] and back["model"]["fingerprint"] == Checkpoint(tiny_ckpt).fingerprint()
    assert back["provenance"]["emo_slice_version"] and back["settings"]["examples"] == str(docs)
    check_profile_matches(back, Checkpoint(tiny_ckpt))
    with pytest.raises(UsageError, match="another model"):
        check_profile_matches(back, Checkpoint(fixtures / "emo-tiny"))
    from emo_slice.io.build import random_checkpoint

    twin = random_checkpoint(tmp_path / "twin", "tiny", seed=1)  # same architecture, other weights
    assert Checkpoint(twin).fingerprint() == Checkpoint(tiny_ckpt).fingerprint()
    with pytest.raises(UsageError, match="another model"):
        check_profile_matches(back, Checkpoint(twin))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not an emo-slice profile"):
        load_profile(tmp_path / "bad.json")
    rows = concentration(back)
    for r, layer in zip(rows, back["layers"]):
        s = sorted(layer["scores"]["mean-prob"], reverse=True)
        assert r["top_0.25"] == pytest.approx(sum(s[:2]) / sum(s)) and r["top_0.125"] == pytest.approx(s[0] / sum(s))


def test_cli_profile_then_extract(tiny_ckpt, docs, tmp_path):
    from typer.testing import CliRunner

    from emo_slice.cli import app

    runner = CliRunner(env={"COLUMNS": "200"})
    out = tmp_path / "p.json"
    r = runner.invoke(app, ["profile", str(tiny_ckpt), "--examples", str(docs), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    assert "top 25%" in r.stdout and out.exists()
    r = runner.invoke(
        app,
        [
            "extract",
            str(tiny_ckpt),
            "--keep",
            "25%",
            "--profile",
            str(out),
            "--method",
            "easy-ep",
            "--out",
            str(tmp_path / "s"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    manifest = json.loads(r.stdout)
    scores = load_profile(out)["layers"][0]["scores"]["easy-ep"]
    assert manifest["kept_experts"][0] == sorted(sorted(range(8), key=lambda e: -scores[e])[:1]) + [8]
    assert manifest["keep"] == 2 and manifest["layers"][0]["scores"] == scores
    # --examples --greedy profiles in place and slices as the greedy profile does
    greedy = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs), greedy=True, keep="4", method="frequency"))
    r = runner.invoke(
        app,
        [
            "extract",
            str(tiny_ckpt),
            "--keep",
            "4",
            "--examples",
            str(docs),
            "--greedy",
            "--method",
            "frequency",
            "--out",
            str(tmp_path / "g"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["kept_experts"] == greedy["greedy"]["kept"]
    # refusals: empty examples, --keep without --greedy; nothing written
    (tmp_path / "empty.txt").write_text("  \n")
    for args, msg in (
        (["--examples", str(tmp_path / "empty.txt")], "empty"),
        (["--examples", str(docs), "--keep", "4"], "--greedy"),
    ):
        r = runner.invoke(app, ["profile", str(tiny_ckpt), *args, "--out", str(tmp_path / "no.json")])
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "no.json").exists()


def test_layer_load_equals_whole_model(fixtures):
    """Layers read one at a time (plain reads, no mmap) equal the whole model's, in both dtypes."""
    import emo_slice
    from emo_slice.io.loading import load_layer

    ck = Checkpoint(fixtures / "emo-tiny")
    for dtype in (torch.float32, torch.bfloat16):
        whole = emo_slice.load_model(ck, dtype=dtype).model.layers[1].state_dict()
        one = load_layer(ck, 1, dtype).state_dict()
        assert whole.keys() == one.keys()
        assert all(one[k].dtype == dtype and torch.equal(whole[k], one[k]) for k in whole)
