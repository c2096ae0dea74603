"""extract: reference slice reproduced bit for bit, logits invariants, streaming, refusals."""

import json
import shutil

import pytest
import torch
from conftest import invoke, run_cli
from safetensors.torch import load_file

from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.model.hf_names import EXPERT_KEY
from emo_slice.slicing.extract import MANIFEST, extract
from emo_slice.slicing.select import plan_slice


def _tensors(folder):
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


def _restricted_logits(full, kept, ids):
    """The full model's logits with every dropped routed expert's router logit set to -inf."""
    hooks = []
    for layer, keep in zip(full.model.layers, kept):
        E = layer.mlp.n_experts
        mask = torch.full((E,), float("-inf"))
        mask[keep] = 0.0
        hooks.append(layer.mlp.gate.register_forward_hook(lambda m, i, o, mask=mask: o + mask))
    try:
        with torch.no_grad():
            return full(ids)
    finally:
        for h in hooks:
            h.remove()


def test_reproduces_reference_slice(fixtures, tmp_path):
    ref = fixtures / "emo-tiny-keep-1-3-4-6"
    out = tmp_path / "slice"
    r = run_cli("extract", fixtures / "emo-tiny", "--experts", "1,3,4,6", "--out", out)
    assert r.returncode == 0, r.stderr
    mine, theirs = _tensors(out), _tensors(ref)
    assert mine.keys() == theirs.keys()
    for name in theirs:
        assert mine[name].dtype == theirs[name].dtype and torch.equal(mine[name], theirs[name]), name
    assert json.loads((out / "config.json").read_text()) == json.loads((ref / "config.json").read_text())
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kept_experts"] == [json.loads((ref / "reference_keep.json").read_text())["kept_experts"]] * 2
    assert manifest["source"]["fingerprint"] == Checkpoint(fixtures / "emo-tiny").fingerprint()
    assert manifest["provenance"]["emo_slice_version"]
    # the slice runs like the reference code's sliced model
    want = load_file(ref / "reference_outputs.safetensors")
    model = load_model(out)
    res = model(want["input_ids"], return_routing=True)
    assert torch.allclose(res["logits"], want["logits"], atol=1e-4)
    for l, r_ in enumerate(res["routing"]):
        assert torch.allclose(r_.logits_NE.float(), want[f"router_logits.{l}"], atol=1e-4)


def test_keep_all_reproduces_full_logits(tiny_ckpt, tmp_path):
    ck = Checkpoint(tiny_ckpt)
    plan = plan_slice(ck, "9", method="random", seed=3)
    assert plan.kept == [list(range(9))] * 2
    extract(ck, plan, tmp_path / "all")
    full, sl = load_model(tiny_ckpt), load_model(tmp_path / "all")
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(full(ids), sl(ids))


@pytest.mark.parametrize("keep,per_layer", [("6", False), ("4", False), ("5", True)])
def test_slice_equals_restricted_router(tiny_ckpt, tmp_path, keep, per_layer):
    ck = Checkpoint(tiny_ckpt)
    scores = [torch.rand(8, generator=torch.Generator().manual_seed(l)).tolist() for l in range(2)]
    fake = {"layers": [{"scores": {"mean-prob": s}} for s in scores]}
    plan = plan_slice(ck, keep, profile=fake, per_layer=per_layer)
    for l, kept in enumerate(plan.kept):
        assert kept[-1] == 8 and kept[:-1] == sorted(kept[:-1])
    if not per_layer:
        best = sorted(range(8), key=lambda e: -scores[0][e])[: int(keep) - 1]
        assert plan.kept[0][:-1] == sorted(best)
    else:
        assert sum(len(k) for k in plan.kept) == 2 * int(keep)
    extract(ck, plan, tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["output_router_logits"] is False
    if per_layer:
        assert cfg["num_experts_per_layer"] == [len(k) for k in plan.kept]
    else:
        assert cfg["num_experts"] == int(keep) and cfg["num_experts_per_tok"] == min(3, int(keep))
    full, sl = load_model(tiny_ckpt), load_model(tmp_path / "s")
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(sl(ids), _restricted_logits(full, plan.kept, ids), atol=1e-5)


def test_streams_bytes_and_copies_files(tiny_ckpt, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    (src / "tokenizer_config.json").write_text('{"x": 1}\n')
    (src / "modeling_emo.py").write_text("# remote code\n")
    read = []
    orig_get = Checkpoint.get
    monkeypatch.setattr(
        Checkpoint, "get", lambda self, name, dtype=None: read.append(name) or orig_get(self, name, dtype)
    )
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    extract(src, plan_slice(Checkpoint(src), experts="0,5"), tmp_path / "s")
    assert sorted(read) == ["model.layers.0.mlp.gate.weight", "model.layers.1.mlp.gate.weight"]  # experts: bytes
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # source untouched
    assert (tmp_path / "s" / "modeling_emo.py").read_text() == "# remote code\n"
    assert (tmp_path / "s" / "tokenizer_config.json").exists()
    monkeypatch.undo()
    a, b = _tensors(src), _tensors(tmp_path / "s")
    for name, t in b.items():
        m = EXPERT_KEY.match(name)
        if m:
            old = [0, 5, 8][int(m.group(2))]
            assert torch.equal(t, a[name.replace(f"experts.{m.group(2)}.", f"experts.{old}.")])
        elif name.endswith("mlp.gate.weight"):
            assert torch.equal(t, a[name][[0, 5, 8]])
        else:
            assert torch.equal(t, a[name])
    # re-slicing a slice traces the original ids
    extract(tmp_path / "s", plan_slice(Checkpoint(tmp_path / "s"), experts="1"), tmp_path / "s2")
    m2 = json.loads((tmp_path / "s2" / MANIFEST).read_text())
    assert m2["kept_experts"] == [[5, 8], [5, 8]]


def test_dtype_cast(tiny_ckpt, tmp_path):
    ck = Checkpoint(tiny_ckpt)
    extract(ck, plan_slice(ck, experts="2,3"), tmp_path / "bf", dtype="bfloat16")
    t = _tensors(tmp_path / "bf")
    assert all(v.dtype == torch.bfloat16 for v in t.values())
    assert torch.equal(
        t["model.layers.0.mlp.experts.1.up_proj.weight"],
        ck.get("model.layers.0.mlp.experts.3.up_proj.weight").bfloat16(),
    )
    assert json.loads((tmp_path / "bf" / "config.json").read_text())["dtype"] == "bfloat16"


def test_warns_when_k_covers_every_expert(tiny_ckpt, tmp_path):
    r = invoke("extract", tiny_ckpt, "--keep", "3", "--method", "random", "--out", tmp_path / "s")
    assert r.returncode == 0 and "every kept expert fires on every token" in r.stderr


def test_refusals_leave_nothing(tiny_ckpt, fixtures, tmp_path):
    other_profile = tmp_path / "other.json"
    r = invoke("profile", fixtures / "emo-tiny", "--examples", fixtures / "README.md", "--out", other_profile)
    assert r.returncode == 0, r.stderr
    (tmp_path / "empty.txt").write_text("")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    cases = [
        (["--keep", "10", "--method", "random"], "more than the 9 experts"),
        (["--keep", "1", "--method", "random"], "keeps no routed expert"),
        (["--keep", "0%", "--method", "random"], "keeps no expert"),
        (["--keep", "abc", "--method", "random"], "neither a count nor a share"),
        (["--keep", "4", "--profile", other_profile], "another model"),
        (["--keep", "4", "--examples", tmp_path / "empty.txt"], "empty"),
        (["--keep", "4", "--examples", tmp_path / "nope.txt"], "no such file"),
        (["--keep", "4", "--profile", other_profile, "--experts", "1,2"], "only one of"),
        (["--keep", "4"], "--profile FILE"),
        (["--experts", "1,99"], "does not exist"),
    ]
    for args, msg in cases:
        out = tmp_path / "out"
        r = invoke("extract", tiny_ckpt, *args, "--out", out)
        assert r.returncode != 0 and msg in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not out.exists()
    r = invoke("extract", tmp_path / "missing", "--keep", "4", "--method", "random", "--out", tmp_path / "out")
    assert r.returncode != 0 and "no checkpoint folder" in r.stderr and not (tmp_path / "out").exists()
    r = invoke("extract", tiny_ckpt, "--keep", "4", "--method", "random", "--out", tiny_ckpt / "sub")
    assert r.returncode != 0 and "inside the input" in r.stderr and not (tiny_ckpt / "sub").exists()
    r = invoke("extract", tiny_ckpt, "--keep", "4", "--method", "random", "--out", full)
    assert r.returncode != 0 and "--overwrite" in r.stderr and [p.name for p in full.iterdir()] == ["keep.txt"]
    r = invoke("extract", tiny_ckpt, "--keep", "4", "--method", "random", "--out", full, "--overwrite")
    assert r.returncode == 2 and "did not write" in r.stderr and (full / "keep.txt").exists()  # a user's folder
    (full / ".emo-slice").write_text("{}")  # a marker emo-slice did not write: still refused
    r = invoke("extract", tiny_ckpt, "--keep", "4", "--method", "random", "--out", full, "--overwrite")
    assert r.returncode == 2 and "did not write" in r.stderr and (full / "keep.txt").exists()
    (full / ".emo-slice").write_text(json.dumps({"created_by": "emo-slice", "files": ["keep.txt"]}))
    assert (  # a folder emo-slice wrote, holding only what its marker lists: --overwrite replaces it
        invoke("extract", tiny_ckpt, "--keep", "4", "--method", "random", "--out", full, "--overwrite").returncode == 0
    )
    assert (full / "slice.json").exists() and not (full / "keep.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_library_refuses_outputs_that_touch_the_source(tiny_ckpt, tmp_path):
    """extract() itself (not only the CLI) guards its output with artifacts.check_output, before writing."""
    ck = Checkpoint(tiny_ckpt)
    plan = plan_slice(ck, experts="0,5")
    before = sorted(p.name for p in tiny_ckpt.iterdir())
    with pytest.raises(UsageError, match="inside the input"):
        extract(ck, plan, tiny_ckpt / "sub", overwrite=True)
    with pytest.raises(UsageError, match="contains the input"):
        extract(ck, plan, tiny_ckpt.parent, overwrite=True)
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        extract(ck, plan, tmp_path / "a.txt", overwrite=True)
    assert sorted(p.name for p in tiny_ckpt.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
