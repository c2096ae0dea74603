"""Memory: weights held at the stored dtype and cast where used (logits equal the float32 copy's), one expert
cast at a time, --max-memory deciding the placement and refusing a budget that cannot hold one layer."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from emo_slice.io import loading
from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import LayerwiseModel, choose_placement, layer_bytes, load_model
from emo_slice.model.modeling import expert_mix
from emo_slice.model.presets import preset
from tests.conftest import assert_one_line_error, invoke


@pytest.fixture(scope="module")
def bf16_ckpt(tmp_path_factory):
    cfg = preset("tiny", num_hidden_layers=3)
    return random_checkpoint(tmp_path_factory.mktemp("bf16") / "bf16", cfg, seed=5, dtype="bfloat16")


def _ids(cfg, seed=0):
    return torch.randint(0, cfg.vocab_size, (2, 10), generator=torch.Generator().manual_seed(seed))


def test_weights_stay_bfloat16_while_logits_equal_the_float32_copy(bf16_ckpt, monkeypatch):
    ref = load_model(bf16_ckpt, "float32")  # every weight converted to float32 up front: the old path
    assert {p.dtype for p in ref.parameters()} == {torch.float32}
    ids = _ids(ref.config)
    with torch.no_grad():
        want = ref(ids)
    resident = LayerwiseModel(bf16_ckpt, "float32", resident=True)
    assert {p.dtype for p in resident.model.parameters()} == {torch.bfloat16}
    held = sum(p.numel() * p.element_size() for p in resident.model.parameters())
    assert held == Checkpoint(bf16_ckpt).total_bytes  # what the checkpoint weighs, not twice that
    seen, real = [], loading.load_layer
    monkeypatch.setattr(loading, "load_layer", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    streamed = LayerwiseModel(bf16_ckpt, "float32")
    for lw in (resident, streamed):
        (got,) = lw.forward([ids])
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert len(seen) == 3 and all(p.dtype == torch.bfloat16 for layer in seen for p in layer.parameters())


class _LargestFloat32(TorchDispatchMode):
    """The largest float32 tensor any op makes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


def test_expert_mix_casts_one_expert_at_a_time():
    g = torch.Generator().manual_seed(0)
    E, F, D, N, K = 16, 24, 32, 6, 3
    x = torch.randn(N, D, generator=g)
    experts = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    weights = torch.rand(N, K, generator=g)
    w16 = [(torch.randn(E, *s, generator=g) * 0.1).bfloat16() for s in ((F, D), (F, D), (D, F))]
    want, want_norms = expert_mix(x, experts, weights, *(w.float() for w in w16), "loop", norms=True)
    with torch.no_grad(), _LargestFloat32() as mode:
        got, norms = expert_mix(x, experts, weights, *w16, norms=True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(norms, want_norms)
    assert mode.largest <= 2 * F * D < E * F * D  # one expert's gate and up, never a layer's stack


def test_max_memory_decides_the_placement(bf16_ckpt):
    ck = Checkpoint(bf16_ckpt)
    layer, outer = layer_bytes(ck, torch.float32)
    assert layer > 0 and outer > 0
    gib = 1 << 30
    assert choose_placement(ck, torch.float32, torch.device("cpu"), max_memory=64 * gib)["placement"] == "device"
    one = choose_placement(ck, torch.float32, torch.device("cpu"), max_memory=layer + outer + gib)
    assert one["placement"] == "streamed" and not one["prefetch"]  # room for one layer: no read-ahead
    two = choose_placement(ck, torch.float32, torch.device("cpu"), max_memory=2 * layer + outer + gib)
    assert two["placement"] == "streamed" and two["prefetch"]


@pytest.mark.parametrize("command", ["eval", "profile", "generate"])
def test_max_memory_that_cannot_hold_one_layer_is_refused(bf16_ckpt, tmp_path, command):
    out = tmp_path / "out.json"
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"context": "a b", "choices": ["c", "d"], "label": 0}) + "\n")
    where = {
        "eval": ["--task", task, "--out", out],
        "profile": ["--examples", task, "--field", "context", "--out", out],
        "generate": ["--prompt", "a b"],
    }[command]
    r = invoke(command, bf16_ckpt, *where, "--max-memory", "0.5GB")
    assert_one_line_error(r, "--max-memory 0.5 GB cannot hold one layer", "give at least --max-memory")
    assert not out.exists() and list(tmp_path.iterdir()) == [task]


def test_max_memory_takes_sizes_and_refuses_nonsense(bf16_ckpt, tmp_path):
    from emo_slice.cli.options import parse_size

    assert parse_size("6GB") == 6 * 10**9 and parse_size("1.5GiB") == 3 * 2**29 and parse_size("512MB") == 512 * 10**6
    r = invoke("generate", bf16_ckpt, "--prompt", "a", "--max-memory", "lots")
    assert r.returncode == 2 and "is not a size" in r.stderr and "Traceback" not in r.stderr


def test_extract_larger_than_the_free_disk_is_refused_before_writing(tiny_ckpt, tmp_path, monkeypatch):
    from collections import namedtuple

    from emo_slice.slicing import extract

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda p: usage(10**12, 10**12 - 1000, 1000))
    out = tmp_path / "deeper" / "slice"
    r = invoke("extract", tiny_ckpt, "--keep", "5", "--method", "random", "--out", out)
    assert_one_line_error(r, "the slice needs", "MB free")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even the parent folder
    monkeypatch.undo()  # the real free space: the same command writes the slice
    assert invoke("extract", tiny_ckpt, "--keep", "5", "--method", "random", "--out", out).returncode == 0
