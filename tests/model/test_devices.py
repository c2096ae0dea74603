"""Devices: --device for profile and eval, placement (whole model vs layer streaming), streaming with
prefetch, the grouped-matmul fallback that sets the torch floor, and tokens/s on the progress bars.

Every device code path runs here with --device cpu (the same code a GPU runs, less the CUDA streams) and
equals the results of the path it replaces. GPU checks: examples/check_devices.py."""

import json
import threading
import time
import weakref

import pytest
import torch
from conftest import assert_one_line_error, invoke

from emo_slice.errors import UsageError
from emo_slice.io import loading
from emo_slice.io.loading import LayerwiseModel, choose_placement, default_dtype, load_model
from emo_slice.slicing.profile import ProfileSettings, profile_model

WORDS = "the of and to in is was for on that with as by at from def return class import print".split()


@pytest.fixture(scope="module")
def deep_ckpt(tmp_path_factory):
    """A random tiny checkpoint with 4 layers (streaming needs more than two to show its bound)."""
    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.presets import preset

    return random_checkpoint(tmp_path_factory.mktemp("deep") / "deep", preset("tiny", num_hidden_layers=4), seed=3)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    import random

    rng = random.Random(0)
    p = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))}) for _ in range(6)]
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    p = tmp_path_factory.mktemp("task") / "task.jsonl"
    items = [
        {
            "id": str(i),
            "context": f"Question {i}: what is {i} plus one?\nAnswer:",
            "choices": ["one", "two", "x"],
            "label": i % 3,
        }
        for i in range(6)
    ]
    p.write_text("".join(json.dumps(it) + "\n" for it in items))
    return p


def _ids(cfg, B=2, T=12, seed=0):
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


# ---- device parsing, dtype, placement --------------------------------------------------------------------


BAD_DEVICES = ["tpu", "meta", "cuda:7"] + ([] if torch.cuda.is_available() else ["cuda"])


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_bad_device_is_one_line_before_any_work(tiny_ckpt, docs, task, tmp_path, device):
    out = tmp_path / "p.json"
    assert_one_line_error(
        invoke("profile", tiny_ckpt, "--examples", docs, "--device", device, "--out", out), "--device"
    )
    assert not out.exists()
    res = tmp_path / "r.json"
    assert_one_line_error(invoke("eval", tiny_ckpt, "--task", task, "--device", device, "--out", res), "--device")
    assert not res.exists()
    with pytest.raises(UsageError, match="`device="):  # the library names its parameter; the CLI, its flag
        profile_model(tiny_ckpt, ProfileSettings(examples=str(docs), device=device))


def test_device_option_is_one_definition():
    import typer.main

    from emo_slice.cli import app

    group = typer.main.get_command(app)
    helps = {
        name: next(p.help for p in group.commands[name].params if "--device" in p.opts)
        for name in ("profile", "eval", "generate")
    }
    assert len(set(helps.values())) == 1 and "cuda:N" in helps["eval"]
    assert any("--layerwise" in p.opts for p in group.commands["profile"].params)


def test_default_dtype_follows_the_device():
    assert default_dtype(None, torch.device("cpu")) == torch.float32
    assert default_dtype(None, torch.device("cuda")) == torch.bfloat16  # no GPU needed to decide
    assert default_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16  # --dtype wins
    assert default_dtype("float32", torch.device("cuda")) == torch.float32


def test_placement_whole_when_it_fits_else_streamed(tiny_ckpt, monkeypatch):
    from emo_slice.io.checkpoint import Checkpoint

    ck, cpu = Checkpoint(tiny_ckpt), torch.device("cpu")
    fits = choose_placement(ck, torch.float32, cpu)
    assert fits["placement"] == "device" and fits["weight_bytes"] == ck.param_counts()["total"] * 4
    assert choose_placement(ck, torch.bfloat16, cpu)["weight_bytes"] == fits["weight_bytes"] // 2
    assert choose_placement(ck, torch.float32, cpu, layerwise=True)["placement"] == "streamed"
    monkeypatch.setattr(loading, "free_memory", lambda device: fits["weight_bytes"] + (1 << 29))  # margin 1 GiB
    assert choose_placement(ck, torch.float32, cpu)["placement"] == "streamed"


# ---- layer streaming with prefetch ----------------------------------------------------------------------


def test_streamed_with_prefetch_equals_whole_model(deep_ckpt):
    ids = _ids(loading.Checkpoint(deep_ckpt).config)
    with torch.no_grad():
        whole = load_model(deep_ckpt, "float32", "cpu")(ids)
    for kw in (dict(), dict(prefetch=False), dict(resident=True)):
        lw = LayerwiseModel(deep_ckpt, "float32", "cpu", **kw)
        (got,) = lw.forward([ids])
        assert torch.equal(got, whole), kw  # bit for bit: the same layer forward, whichever way it is fed
        assert lw.placement == ("device" if kw.get("resident") else "streamed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (examples/check_devices.py checks more)")
def test_cuda_streamed_with_pinned_prefetch_equals_whole(deep_ckpt):
    ids = _ids(loading.Checkpoint(deep_ckpt).config)
    with torch.no_grad():
        cpu = load_model(deep_ckpt, "float32", "cpu")(ids)
    for kw in (dict(), dict(resident=True)):
        (got,) = LayerwiseModel(deep_ckpt, "float32", "cuda", **kw).forward([ids])
        assert got.device.type == "cuda" and torch.allclose(got.cpu(), cpu, atol=1e-4, rtol=1e-4), kw


def test_streaming_overlaps_reading_and_holds_at_most_two_layers(deep_ckpt, monkeypatch):
    """Layer l+1 is read while layer l runs (its read cannot finish before layer l started: a loop that
    read and ran in turn would time out here), and at most two layers are alive at any layer's run."""
    real, alive = loading.load_layer, weakref.WeakSet()
    started, read = ({l: threading.Event() for l in range(4)} for _ in "ab")
    readers, peak = {}, []

    def slow_read(ckpt, layer, dtype, pin=False):
        mod = real(ckpt, layer, dtype, pin)
        alive.add(mod)
        read[layer].set()
        readers[layer] = threading.current_thread().name
        if layer > 0:
            assert started[layer - 1].wait(10), f"layer {layer} was not read while layer {layer - 1} ran"
        return mod

    def trace(b, t):
        started[t.layer].set()
        if t.layer + 1 < 4:
            assert read[t.layer + 1].wait(10)  # the next layer is in memory while this one runs
        peak.append(len(alive))

    monkeypatch.setattr(loading, "load_layer", slow_read)
    cfg = loading.Checkpoint(deep_ckpt).config
    LayerwiseModel(deep_ckpt, "float32", "cpu").forward([_ids(cfg), _ids(cfg, seed=1)], trace=trace)
    assert all(name.startswith("emo-slice-prefetch") for name in readers.values()) and len(readers) == 4
    assert peak == [2] * 6 + [1] * 2  # the running layer and the one read for it; the last one alone


def test_streamed_keeps_head_resident_and_reads_the_embedding_per_pass(deep_ckpt, monkeypatch):
    lw = LayerwiseModel(deep_ckpt, "float32", "cpu")
    cfg = lw.config
    assert not cfg.tie_word_embeddings
    lw.forward([_ids(cfg)])
    reads, real = [], lw.ckpt.get
    monkeypatch.setattr(lw.ckpt, "get", lambda name, dtype=None: reads.append(name) or real(name, dtype))
    lw.forward([_ids(cfg, seed=2), _ids(cfg, seed=3)])
    # the second pass reads decoder layers (through read_into) and the embedding once for all its batches (an
    # untied embedding is not kept between passes: streaming holds two layers and the head, no more)
    assert reads == ["model.embed_tokens.weight"] and lw._embed_w is None


# ---- profile and eval with --device cpu -----------------------------------------------------------------


def test_profile_on_device_equals_streamed(deep_ckpt, docs):
    base = dict(examples=str(docs), max_length=32, device="cpu")
    whole = profile_model(deep_ckpt, ProfileSettings(**base))
    streamed = profile_model(deep_ckpt, ProfileSettings(**base, layerwise=True))
    assert whole["settings"]["placement"] == "device" and streamed["settings"]["placement"] == "streamed"
    assert whole["settings"]["device"] == "cpu" and whole["settings"]["dtype"] == "float32"
    assert [a["scores"] for a in whole["layers"]] == [b["scores"] for b in streamed["layers"]]  # exactly
    greedy = dict(greedy=True, keep="4", method="reap")
    g_whole = profile_model(deep_ckpt, ProfileSettings(**base, **greedy))
    g_streamed = profile_model(deep_ckpt, ProfileSettings(**base, **greedy, layerwise=True))
    assert g_whole["greedy"]["kept"] == g_streamed["greedy"]["kept"]
    assert [a["scores"] for a in g_whole["layers"]] == [b["scores"] for b in g_streamed["layers"]]


def test_streamed_profile_reads_the_layers_and_the_embedding_never_the_head(deep_ckpt, docs, monkeypatch):
    """Profile needs the routers and the experts of every layer (its REAP and EASY-EP scores take every expert's
    output norm, the last layer's too), never the final norm or the output head: they are not read."""
    reads, get, read_into = [], loading.Checkpoint.get, loading.Checkpoint.read_into
    monkeypatch.setattr(loading.Checkpoint, "get", lambda self, n, dtype=None: reads.append(n) or get(self, n, dtype))
    monkeypatch.setattr(
        loading.Checkpoint, "read_into", lambda self, n, dst: reads.append(n) or read_into(self, n, dst)
    )
    prof = profile_model(deep_ckpt, ProfileSettings(examples=str(docs), max_length=32, layerwise=True))
    assert prof["settings"]["placement"] == "streamed" and prof["inputs"]["chunks"] == 1
    names = loading.Checkpoint(deep_ckpt).names()
    assert sorted(reads) == sorted(n for n in names if n not in ("lm_head.weight", "model.norm.weight"))


def test_profile_cli_device_cpu(deep_ckpt, docs, tmp_path):
    r = invoke(
        "profile",
        deep_ckpt,
        "--examples",
        docs,
        "--max-length",
        "32",
        "--device",
        "cpu",
        "--layerwise",
        "--out",
        tmp_path / "p.json",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["device"], summary["placement"], summary["dtype"]) == ("cpu", "streamed", "float32")
    lib = profile_model(deep_ckpt, ProfileSettings(examples=str(docs), max_length=32, device="cpu"))
    saved = json.loads((tmp_path / "p.json").read_text())
    assert [a["scores"] for a in saved["layers"]] == [b["scores"] for b in lib["layers"]]


def test_eval_device_cpu_whole_and_streamed_agree(deep_ckpt, task, monkeypatch):
    from emo_slice.eval.harness import simple_evaluate

    whole = simple_evaluate(str(deep_ckpt), tasks=[str(task)], device="cpu", log_samples=True)
    streamed = simple_evaluate(str(deep_ckpt), tasks=[str(task)], device="cpu", layerwise=True, log_samples=True)
    assert whole["models"]["model"]["placement"] == "device" and whole["settings"]["device"] == "cpu"
    assert streamed["models"]["model"]["placement"] == "streamed"
    for a, b in zip(whole["samples"], streamed["samples"], strict=True):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-5)
    monkeypatch.setattr(loading, "free_memory", lambda device: 1)  # does not fit: streamed by itself
    auto = simple_evaluate(str(deep_ckpt), tasks=[str(task)], device="cpu", log_samples=True)
    assert auto["models"]["model"]["placement"] == "streamed"
    assert [s["loglikelihoods"] for s in auto["samples"]] == [s["loglikelihoods"] for s in streamed["samples"]]


def test_eval_cli_device_cpu(deep_ckpt, task):
    r = invoke("eval", deep_ckpt, "--task", task, "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    m = data["models"]["model"]
    assert (m["device"], m["placement"], m["dtype"]) == ("cpu", "device", "float32") and m["tokens"] > 0


# ---- torch floor: the grouped-matmul fallback ------------------------------------------------------------


def test_grouped_mm_fallback_equals_grouped(fixtures, monkeypatch):
    from emo_slice.model import modeling
    from emo_slice.model.compat import grouped_mm_works

    model = load_model(fixtures / "emo-tiny", "float32")
    ids = _ids(model.config, B=2, T=16)
    x = torch.randn(8, 64)
    w = torch.randn(9, 32, 64)
    with torch.no_grad():
        grouped = model(ids)
    assert modeling._grouped_mm_ok(x, w) == grouped_mm_works("cpu", torch.float32)
    monkeypatch.delattr(torch, "_grouped_mm", raising=False)  # a torch without it (< 2.8)
    assert not grouped_mm_works("cpu", torch.float32) and not modeling._grouped_mm_ok(x, w)
    with torch.no_grad():
        loop = model(ids)
    assert torch.allclose(loop, grouped, atol=1e-5, rtol=1e-5)


def test_grouped_mm_probe_refuses_a_failing_op(monkeypatch):
    """torch 2.8 has torch._grouped_mm but no CPU kernel: the probe says no and the loop runs."""
    from emo_slice.model import compat

    def broken(*a, **k):
        raise NotImplementedError("no CPU kernel")

    monkeypatch.setattr(torch, "_grouped_mm", broken, raising=False)
    compat._probe.cache_clear()
    try:
        assert not compat.grouped_mm_works("cpu", torch.bfloat16)
    finally:
        compat._probe.cache_clear()


# ---- tokens/s on the progress bars -----------------------------------------------------------------------


def test_progress_bar_shows_tokens_per_s():
    from rich.progress import Progress

    from emo_slice.cli.display import _Count

    bar = Progress()
    tid = bar.add_task("model task", total=10, unit="items", tokens=None)
    time.sleep(0.02)
    bar.update(tid, completed=3, tokens=5000)  # the tokens the loop reported for this task
    text = _Count().render(bar.tasks[0]).plain
    assert text.startswith("3/10 items") and "tokens/s" in text and "left" in text
    nbytes = bar.add_task("writing", total=10, unit="bytes")
    assert "tokens/s" not in _Count().render(bar.tasks[nbytes]).plain
