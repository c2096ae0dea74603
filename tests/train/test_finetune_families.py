"""finetune and merge on the other families: Qwen2-MoE (a gated shared expert apart from the routed ones, and a
dense layer) and Mixtral (its own tensor names); the untuned slice merges back bit for bit, frozen parts stay
bit-identical, the tuned experts land at their original positions."""

import json

import pytest
import torch

from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.model.hf_names import parse_expert, parse_router
from emo_slice.model.presets import family_config
from emo_slice.slicing.extract import extract
from emo_slice.slicing.merge import MergeRecipe, merge
from emo_slice.slicing.select import SlicePlan
from emo_slice.train.finetune import FinetuneTrainer
from emo_slice.train.finetune_config import FinetuneConfig

CASES = {
    "qwen2_moe": dict(mlp_only_layers=[1]),  # layer 1 dense: nothing to slice or merge there
    "mixtral": {},
}


def _tensors(folder) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


@pytest.fixture(scope="module", params=list(CASES))
def family(request, tmp_path_factory):
    fam = request.param
    root = tmp_path_factory.mktemp(fam)
    cfg = family_config(fam, "tiny", **CASES[fam])
    full = random_checkpoint(root / "full", cfg, seed=4)
    kept = [[1, 3, 4, 6] if cfg.is_moe_layer(l) else [] for l in range(cfg.num_hidden_layers)]
    extract(full, SlicePlan(kept=kept, method="experts", keep=4), root / "slice")
    with open(root / "task.jsonl", "w") as f:
        for i in range(20):
            f.write(json.dumps({"prompt": f"{i} + {i} =", "completion": f" {2 * i}"}) + "\n")
    return fam, root, full, kept


def _kind(cfg, name: str) -> str:
    if parse_expert(cfg, name):
        return "routed"  # no shared expert among the stacked ones in these families
    if parse_router(cfg, name) is not None:
        return "router"
    return "shared" if ".shared_expert" in name else "other"


@pytest.mark.parametrize("part", ["routed", "routed+shared"])
def test_frozen_parts_and_the_merge_back(family, tmp_path, part):
    fam, root, full, kept = family
    cfg = Checkpoint(root / "slice").config
    run = tmp_path / "run"
    cfg_ft = FinetuneConfig(
        model=str(root / "slice"), tasks=[str(root / "task.jsonl")], out=str(run), train=part, steps=2,
        batch_size=4, lr=1e-2, progress=False,
    )  # fmt: skip
    final = FinetuneTrainer(cfg_ft).run()
    before, after = _tensors(root / "slice"), _tensors(final)
    learns = {"routed"} | ({"shared"} if part == "routed+shared" else set())
    for name, b in before.items():
        changed = not torch.equal(after[name], b)
        assert changed == (_kind(cfg, name) in learns), (fam, part, name)
    also = ("shared",) if part == "routed+shared" else ()
    merged = _tensors(merge(full, final, tmp_path / "merged", MergeRecipe(also=also)) and tmp_path / "merged")
    f = _tensors(full)
    fcfg = Checkpoint(full).config
    for name, got in merged.items():
        m = parse_expert(fcfg, name)
        if m and m[1] in kept[m[0]]:
            j = kept[m[0]].index(m[1])
            want = after[name.replace(f"experts.{m[1]}.", f"experts.{j}.")]
        elif ".shared_expert" in name and also:
            want = after[name]
        else:
            want = f[name]
        assert torch.equal(got, want), (fam, part, name)


def test_the_untuned_slice_merges_back_bit_for_bit(family, tmp_path):
    fam, root, full, kept = family
    merge(full, root / "slice", tmp_path / "same", MergeRecipe(also=("router", "shared", "non-moe")))
    f, same = _tensors(full), _tensors(tmp_path / "same")
    assert same.keys() == f.keys()
    for n in f:
        assert same[n].view(torch.uint8).numpy().tobytes() == f[n].view(torch.uint8).numpy().tobytes(), (fam, n)
