"""Memory: weights held at the stored dtype and cast where used (logits equal the float32 copy's), one expert
cast at a time, --max-memory deciding the placement and refusing a budget that cannot hold one layer."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import assert_one_line_error, invoke
from torch.utils._python_dispatch import TorchDispatchMode

from emo_slice.io import loading
from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import LayerwiseModel, choose_placement, layer_bytes, load_model
from emo_slice.model import modeling
from emo_slice.model.modeling import expert_mix
from emo_slice.model.presets import preset
from emo_slice.slicing import profile


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
    assert mode.largest <= 3 * F * D < E * F * D  # one expert's gate, up and down, never a layer's stack


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


class _Largest(TorchDispatchMode):
    """The largest tensor (elements, any dtype) any op makes, and the largest float64 one."""

    def __init__(self):
        super().__init__()
        self.largest = self.largest_f64 = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
                if t.dtype == torch.float64:
                    self.largest_f64 = max(self.largest_f64, t.numel())
        return out


def _one_index_add(x, experts, weights, w_gate, w_up, w_down):
    """The EMO sum as one index_add_ of every sorted pair over the gathered [M, D] inputs and outputs (the
    reference's formula), with the pair norms of the whole [M, D] output at once."""
    N, K = experts.shape
    order = torch.argsort(experts.reshape(-1), stable=True)
    tok = order // K
    x_MD = x[tok]
    counts = torch.bincount(experts.reshape(-1), minlength=w_gate.shape[0]).tolist()
    y_MD = modeling._loop_inplace(x_MD, counts, w_gate, w_up, w_down)
    norms = torch.empty(N * K, dtype=torch.float64)
    norms[order] = torch.linalg.vector_norm(y_MD, dim=-1, dtype=torch.float64)
    y_MD = y_MD * weights.reshape(-1)[order, None]
    return torch.zeros_like(x).index_add_(0, tok, y_MD.to(x.dtype)), norms.view(N, K)


@pytest.mark.parametrize("weights_dtype", [torch.bfloat16, torch.float32])
def test_expert_mix_for_inference_holds_nothing_of_pair_size_and_equals_one_index_add(weights_dtype):
    """Inference (profile, eval, map) never makes a tensor of the K x N token-expert pairs: x [M, D] and the
    outputs [M, D] were 0.3 GB on the release's 2,065 profile tokens; the output and the norms are bit for bit
    those of one index_add_ of every pair."""
    g = torch.Generator().manual_seed(1)
    E, F, D, N, K = 16, 24, 32, 64, 8
    x = torch.randn(N, D, generator=g)
    experts = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    weights = torch.rand(N, K, generator=g)
    w = [(torch.randn(E, *s, generator=g) * 0.1).to(weights_dtype) for s in ((F, D), (F, D), (D, F))]
    want, want_norms = _one_index_add(x, experts, weights, *w)
    with torch.no_grad(), _Largest() as mode:
        got, norms = expert_mix(x, experts, weights, *w, "loop", norms=True)
        plain = expert_mix(x, experts, weights, *w, "loop")
    assert torch.equal(got, want) and torch.equal(norms, want_norms) and torch.equal(plain, want)
    assert mode.largest <= max(N * D, 3 * F * D) < N * K * D  # the activations, one expert's weights, never [M, D]


def test_residual_change_is_taken_in_blocks_and_equals_the_whole_batch(monkeypatch):
    """The profile's 1 - cos(h, y) per token: float64 copies of CHANGE_BLOCK_ROWS tokens at a time, not of the
    batch (2 x 2,065 x 2048 x 8 bytes on the release), with the same values."""
    g = torch.Generator().manual_seed(2)
    N, D = 50, 16
    h, y = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    valid = torch.rand(N, generator=g) > 0.2
    want = 1.0 - torch.nn.functional.cosine_similarity(h[valid].double(), y[valid].double(), dim=-1)
    monkeypatch.setattr(profile, "CHANGE_BLOCK_ROWS", 7)
    with _Largest() as mode:
        got = profile._change(h, y, valid, torch.float64)
    assert torch.equal(got, want)
    assert mode.largest_f64 <= 7 * D < int(valid.sum()) * D  # a block's copies, never the batch's


def test_expert_mix_in_bfloat16_keeps_one_index_add_of_every_pair():
    """In bfloat16 one index_add_ of every pair rounds otherwise than one add per expert: it is kept, and its
    results are unchanged."""
    g = torch.Generator().manual_seed(3)
    E, F, D, N, K = 16, 24, 32, 64, 8
    x = torch.randn(N, D, generator=g).bfloat16()
    experts = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    weights = torch.rand(N, K, generator=g)
    w = [(torch.randn(E, *s, generator=g) * 0.1).bfloat16() for s in ((F, D), (F, D), (D, F))]
    want, want_norms = _one_index_add(x, experts, weights, *w)
    with torch.no_grad():
        got, norms = expert_mix(x, experts, weights, *w, "loop", norms=True)
    assert torch.equal(got, want) and torch.equal(norms, want_norms)


class _Allocations(TorchDispatchMode):
    """(op, elements) of every new tensor (not a view of an input, not an in-place result) of at least
    `least` elements that an op makes."""

    def __init__(self, least: int):
        super().__init__()
        self.least, self.made = least, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.numel() >= self.least and t.untyped_storage().data_ptr() not in inputs:
                self.made.append((str(func), t.numel()))
        return out


def test_casts_write_into_one_kept_buffer(monkeypatch):
    """A narrow weight is cast into a buffer kept between calls, not a fresh tensor per call (a fresh 16 MB
    tensor costs thousands of page faults per weight): after the first call no op makes a tensor of a
    weight's size, for a Linear, the head's row blocks and the expert loop, and the results are unchanged."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 64, generator=g)
    w1, w2 = (torch.randn(96, 64, generator=g).bfloat16() for _ in range(2))
    monkeypatch.setattr(modeling, "CAST_BLOCK_ELEMENTS", 32 * 64)  # the head's case: 3 row blocks of 32
    E, F, D, N, K = 6, 40, 64, 12, 2
    xe = torch.randn(N, D, generator=g)
    experts = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(N)])
    weights = torch.rand(N, K, generator=g)
    we = [(torch.randn(E, *s, generator=g) * 0.1).bfloat16() for s in ((F, D), (F, D), (D, F))]
    want_e = expert_mix(xe, experts, weights, *(w.float() for w in we), "loop")
    with torch.no_grad():
        first_e = expert_mix(xe, experts, weights, *we, "loop")  # the buffers are made here
        modeling.cast_linear(x, w1)
        with _Allocations(least=32 * 64) as mode:
            got1, got2 = modeling.cast_linear(x, w1), modeling.cast_linear(x, w2)
            got_e = expert_mix(xe, experts, weights, *we, "loop")
    assert mode.made == []
    assert torch.equal(got1, torch.nn.functional.linear(x, w1.float()))
    assert torch.equal(got2, torch.nn.functional.linear(x, w2.float()))
    assert torch.equal(got_e, first_e)
    torch.testing.assert_close(got_e, want_e, rtol=1e-6, atol=1e-6)  # (gate and up as one matmul: float rounding)


def test_casts_recorded_for_autograd_are_not_shared():
    """With autograd recording, each cast is its own tensor (the backward pass uses it after the next cast):
    the gradient through two narrow weights equals the float32 copy's."""
    g = torch.Generator().manual_seed(4)
    w1, w2 = (torch.randn(8, 16, generator=g).bfloat16() for _ in range(2))
    x = torch.randn(3, 16, generator=g, requires_grad=True)
    (modeling.cast_linear(x, w1) * modeling.cast_linear(x, w2)).sum().backward()
    want = x.detach().clone().requires_grad_()
    (torch.nn.functional.linear(want, w1.float()) * torch.nn.functional.linear(want, w2.float())).sum().backward()
    assert torch.equal(x.grad, want.grad)
