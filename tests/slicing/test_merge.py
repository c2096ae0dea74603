"""merge: a slice's experts back into its full model, checked tensor by tensor against an independent computation."""

import json
import shutil

import pytest
import torch
from conftest import assert_one_line_error, invoke
from safetensors.torch import save_file

from emo_slice.errors import UsageError
from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.model.hf_names import EXPERT_KEY
from emo_slice.slicing.extract import MANIFEST, extract
from emo_slice.slicing.merge import MERGE_FILE, MergeRecipe, merge
from emo_slice.slicing.select import SlicePlan

KEPT = [[1, 3, 4, 8], [0, 5, 6, 8]]  # per layer, original ids (8 = the shared expert of the tiny preset)


def _tensors(folder) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _slice(full, out, kept=KEPT):
    extract(full, SlicePlan(kept=kept, method="experts", keep=len(kept[0])), out)
    return out


def _tune(src, out, seed=1, dtype=None):
    """A copy of slice `src` with every tensor changed (what a fine-tuning of everything would give)."""
    shutil.copytree(src, out)
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, t in _tensors(src).items():
        t = t + 0.5 * torch.randn(t.shape, generator=g)
        tensors[name] = t.to(dtype) if dtype else t
    (out / "model.safetensors").unlink()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    full = random_checkpoint(root / "full", "tiny", seed=3)
    sl = _slice(full, root / "slice")
    return root, full, sl, _tune(sl, root / "tuned")


def _where(name: str, cfg) -> tuple[int, int] | None:
    m = EXPERT_KEY.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def test_untuned_slice_reproduces_the_full_model_bit_for_bit(models, tmp_path):
    root, full, sl, _ = models
    for also in ((), ("router", "shared", "non-moe")):
        out = tmp_path / f"m{len(also)}"
        merge(full, sl, out, MergeRecipe(also=also))
        mine, theirs = _tensors(out), _tensors(full)
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert mine[name].dtype == theirs[name].dtype and _bytes(mine[name]) == _bytes(theirs[name]), name
        assert (out / "config.json").read_bytes() == (full / "config.json").read_bytes()


def test_merged_experts_are_the_slices_and_every_other_tensor_the_full_models(models, tmp_path):
    root, full, sl, tuned = models
    f, t = _tensors(full), _tensors(tuned)
    cfg = Checkpoint(full).config
    R = cfg.num_experts - cfg.num_shared_experts
    for also in ((), ("router",), ("router", "shared", "non-moe")):
        out = tmp_path / ("m-" + "-".join(also))
        rec = merge(full, tuned, out, MergeRecipe(also=also))
        m = _tensors(out)
        assert m.keys() == f.keys()
        for name, got in m.items():
            where = _where(name, cfg)
            want = f[name]
            if where and where[1] in KEPT[where[0]] and (where[1] < R or "shared" in also):
                j = KEPT[where[0]].index(where[1])
                want = t[name.replace(f"experts.{where[1]}.", f"experts.{j}.")]
            elif name.endswith("mlp.gate.weight") and "router" in also:
                layer = int(name.split(".")[2])
                want = f[name].clone()
                want[KEPT[layer]] = t[name]
            elif not where and not name.endswith("mlp.gate.weight") and "non-moe" in also:
                want = t[name]
            assert torch.equal(got, want), (also, name)
        routed = sum(len([e for e in k if e < R]) for k in KEPT) * 3
        assert rec["tensors_merged"]["routed"] == routed
        assert rec["tensors_merged"]["shared"] == (6 if "shared" in also else 0)
        assert rec["tensors_merged"]["router"] == (2 if "router" in also else 0)


def test_average_blends_and_weight_one_equals_replace(models, tmp_path):
    root, full, sl, tuned = models
    also = ("router", "shared", "non-moe")
    merge(full, tuned, tmp_path / "replace", MergeRecipe("replace", also=also))
    merge(full, tuned, tmp_path / "w1", MergeRecipe("average", 1.0, also=also))
    merge(full, tuned, tmp_path / "w0", MergeRecipe("average", 0.0, also=also))
    merge(full, tuned, tmp_path / "half", MergeRecipe("average", 0.25, also=also))
    rep, w1, w0, half = (_tensors(tmp_path / n) for n in ("replace", "w1", "w0", "half"))
    f = _tensors(full)
    for name in rep:
        assert torch.equal(w1[name], rep[name]), name
        assert torch.equal(w0[name], f[name]), name
        want = 0.75 * f[name].double() + 0.25 * rep[name].double()  # rep holds the tuned values where merged
        assert torch.allclose(half[name].double(), want, atol=1e-6, rtol=0), name


def test_stored_dtype_kept_and_record(tmp_path):
    full = random_checkpoint(tmp_path / "full", "tiny", seed=5, dtype="bfloat16")
    tuned = _tune(_slice(full, tmp_path / "slice"), tmp_path / "tuned", dtype=torch.float32)
    rec = merge(full, tuned, tmp_path / "out")
    m, t = _tensors(tmp_path / "out"), _tensors(tuned)
    assert all(x.dtype == torch.bfloat16 for x in m.values())
    name = "model.layers.0.mlp.experts.3.up_proj.weight"  # kept id 3 is slice position 1 in layer 0
    assert torch.equal(m[name], t["model.layers.0.mlp.experts.1.up_proj.weight"].to(torch.bfloat16))
    saved = json.loads((tmp_path / "out" / MERGE_FILE).read_text())
    assert saved["full"]["fingerprint"] == Checkpoint(full).fingerprint() == rec["full"]["fingerprint"]
    assert saved["slice"]["path"] == str(tuned.resolve()) and saved["experts"] == KEPT
    assert saved["mode"] == "replace" and saved["provenance"]["emo_slice_version"]


def test_slice_of_a_slice_merges_into_the_root_and_its_parent(tmp_path):
    full = random_checkpoint(tmp_path / "full", "tiny", seed=7)
    first = _slice(full, tmp_path / "first")  # ids 1,3,4 (+8) of the full model
    second = tmp_path / "second"  # positions 0 and 2 of the first slice (+ its shared one, position 3)
    extract(first, SlicePlan(kept=[[0, 2, 3], [1, 2, 3]], method="experts", keep=3), second)
    tuned = _tune(second, tmp_path / "tuned")
    into_root = _tensors(merge(full, tuned, tmp_path / "root", MergeRecipe(also=("shared",))) and tmp_path / "root")
    t = _tensors(tuned)
    assert torch.equal(
        into_root["model.layers.0.mlp.experts.4.down_proj.weight"], t["model.layers.0.mlp.experts.1.down_proj.weight"]
    )
    assert torch.equal(
        into_root["model.layers.1.mlp.experts.6.gate_proj.weight"], t["model.layers.1.mlp.experts.1.gate_proj.weight"]
    )
    into_parent = _tensors(merge(first, tuned, tmp_path / "parent") and tmp_path / "parent")
    assert torch.equal(
        into_parent["model.layers.0.mlp.experts.2.down_proj.weight"], t["model.layers.0.mlp.experts.1.down_proj.weight"]
    )


def test_a_slice_of_another_model_is_refused(models, tmp_path):
    root, full, sl, tuned = models
    other = random_checkpoint(tmp_path / "other", "tiny", seed=4)  # same architecture, other weights
    with pytest.raises(UsageError, match="slice of another model"):
        merge(other, tuned, tmp_path / "out")
    r = invoke("merge", other, "--slice", tuned, "--out", tmp_path / "out")
    assert_one_line_error(r, "slice of another model")
    assert not (tmp_path / "out").exists()


def test_bad_inputs_one_line_nothing_written(models, tmp_path):
    root, full, sl, tuned = models
    r = invoke("merge", full, "--slice", tuned, "--out", full / "merged")
    assert_one_line_error(r, "inside the input")
    assert not (full / "merged").exists()
    damaged = tmp_path / "damaged"
    shutil.copytree(tuned, damaged)
    rec = json.loads((damaged / MANIFEST).read_text())
    rec["source"]["fingerprint"] = "0" * 16
    (damaged / MANIFEST).write_text(json.dumps(rec))
    r = invoke("merge", full, "--slice", damaged, "--out", tmp_path / "o1")
    assert_one_line_error(r, "slice of another model")
    (damaged / MANIFEST).unlink()
    r = invoke("merge", full, "--slice", damaged, "--out", tmp_path / "o2")
    assert_one_line_error(r, "slice.json")
    r = invoke("merge", full, "--slice", tuned, "--out", tmp_path / "o3", "--mode", "replace", "--weight", "0.5")
    assert_one_line_error(r, "--weight")
    r = invoke("merge", full, "--slice", tuned, "--out", tmp_path / "o4", "--mode", "average", "--weight", "1.5")
    assert_one_line_error(r, "--weight")
    r = invoke("merge", full, "--slice", tuned, "--out", tmp_path / "o5", "--also", "experts")
    assert_one_line_error(r, "--also")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_a_per_layer_slice_merges_back_bit_for_bit(tmp_path):
    full = random_checkpoint(tmp_path / "full", "tiny", seed=9)
    kept = [[1, 3, 8], [0, 5, 6, 7, 8]]  # a different count per layer (num_experts_per_layer)
    extract(full, SlicePlan(kept=kept, method="experts", keep=[3, 5], per_layer=True), tmp_path / "slice")
    tuned = _tune(tmp_path / "slice", tmp_path / "tuned")
    merge(full, tmp_path / "slice", tmp_path / "same")
    f, same = _tensors(full), _tensors(tmp_path / "same")
    assert all(_bytes(same[n]) == _bytes(f[n]) for n in f)
    m, t = _tensors(merge(full, tuned, tmp_path / "m") and tmp_path / "m"), _tensors(tuned)
    assert torch.equal(
        m["model.layers.1.mlp.experts.7.up_proj.weight"], t["model.layers.1.mlp.experts.3.up_proj.weight"]
    )
    assert torch.equal(
        m["model.layers.0.mlp.experts.7.up_proj.weight"], f["model.layers.0.mlp.experts.7.up_proj.weight"]
    )
