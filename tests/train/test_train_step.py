"""The training step: bf16 weights cast once per optimizer step, one host read per step, MFU in the log."""

import json
import random

import pytest
import torch
from conftest import free_port, join_gloo, tiny_train_config
from torch.utils._python_dispatch import TorchDispatchMode

from emo_slice.train.trainer import Trainer, pretrain

WORDS = "apple banana cherry grape melon engine wheel brake motor gear road drive fuel".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    p = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    with open(p, "w") as f:
        for _ in range(160):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24)))}) + "\n")
    return p


def _cfg(corpus, out, **kw):
    return tiny_train_config(
        corpus, out, **{"micro_batch_size": 2, "steps": 4, "warmup_steps": 1, "data_workers": 0, **kw}
    )


class _Reads(TorchDispatchMode):
    """Counts host reads of tensor values (item, float(), int(), bool(), and C++ ops that read a size back)
    and conversions of the given tensors (by storage) to another dtype."""

    def __init__(self, watched):
        super().__init__()
        self.watched = {t.untyped_storage().data_ptr() for t in watched}
        self.scalar_reads = self.weight_casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.scalar_reads += 1
        if func is torch.ops.aten._to_copy.default and args[0].untyped_storage().data_ptr() in self.watched:
            self.weight_casts += 1
        return func(*args, **(kwargs or {}))


def _run_counted(t: Trainer, monkeypatch):
    """One optimizer step of `t` (2 micro-batches) under _Reads; what was seen when the figures reached the host."""
    tolists, copies, seen = [], [], {}
    real_tolist, real_copy = torch.Tensor.tolist, torch._foreach_copy_
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: tolists.append(1) or real_tolist(self))
    monkeypatch.setattr(torch, "_foreach_copy_", lambda *a, **k: copies.append(1) or real_copy(*a, **k))
    windows = [t._micro_ids(t.step, m) for m in range(t.accum)]

    def check(figures):
        seen.update(reads=counter.scalar_reads, casts=counter.weight_casts, tolists=len(tolists))
        seen["master_grads"] = {p.grad.dtype for p in t.raw.parameters() if p.grad is not None}
        if t.runner.precision.module is not None:
            seen["bf16_grads_left"] = [p for p in t.runner.precision.module.parameters() if p.grad is not None]

    with _Reads(list(t.raw.parameters())) as counter:
        t.runner.run(t.step, 1e-3, windows, check)
    monkeypatch.undo()
    return seen, len(copies)


def test_bf16_weights_are_cast_once_per_step_and_the_step_reads_the_host_once(corpus, tmp_path, monkeypatch):
    t = Trainer(_cfg(corpus, tmp_path / "step", dtype="bfloat16"))
    assert t.accum == 2 and t.pool is not None and t.doc_attn
    t.train_step()  # the first forward probes the grouped-matmul kernel once (model/compat.py)
    seen, foreach_copies = _run_counted(t, monkeypatch)
    assert seen["tolists"] == 1 and seen["reads"] == 0  # the figures, once; nothing else read back
    assert seen["casts"] == 0 and foreach_copies == 1  # one bf16 refresh for two micro-batches, no per-layer casts
    assert seen["master_grads"] == {torch.float32} and seen["bf16_grads_left"] == []  # accumulated in fp32
    bf16 = dict(t.runner.precision.module.named_parameters())
    t.runner.precision.forward_module()  # refreshed after the optimizer step
    for name, p in t.raw.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(bf16[name], p.detach().to(torch.bfloat16)), name

    auto = Trainer(_cfg(corpus, tmp_path / "auto", dtype="bfloat16", mixed_precision="autocast"))
    seen, _ = _run_counted(auto, monkeypatch)
    assert seen["casts"] >= 2 * 2 * 5  # autocast: each layer's weights again in every micro-batch (and backward)
    f32 = Trainer(_cfg(corpus, tmp_path / "f32"))
    f32.train_step()
    seen, _ = _run_counted(f32, monkeypatch)
    assert seen["tolists"] == 1 and seen["reads"] == 0 and seen["casts"] == 0


def test_bf16_modes_train_alike_and_mfu_is_logged_with_a_peak(corpus, tmp_path):
    f32 = Trainer(_cfg(corpus, tmp_path / "f32")).train_step()
    assert "mfu" not in f32  # CPUs: MFU only with --set peak_tflops
    for name, mode in [("step", "step"), ("auto", "autocast")]:
        t = Trainer(_cfg(corpus, tmp_path / name, peak_tflops=0.5, dtype="bfloat16", mixed_precision=mode))
        r = t.train_step()  # the same weights and batch as f32's first step
        assert r["loss"] == pytest.approx(f32["loss"], rel=1e-2) and r["loss"] != f32["loss"], name
        assert r["grad_norm"] == pytest.approx(f32["grad_norm"], rel=5e-2), name
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * t.flops_per_token / 0.5e12, rel=1e-3, abs=1e-4)


def test_compile_option_compiles_the_layers_dense_parts(corpus, tmp_path):
    t = Trainer(_cfg(corpus, tmp_path / "c", compile=True, dtype="bfloat16"))
    layer = t.runner.precision.module.model.layers[0]
    assert layer.self_attn._compiled_call_impl is not None and layer.mlp._compiled_call_impl is None
    plain = Trainer(_cfg(corpus, tmp_path / "p"))
    assert plain.raw.model.layers[0].self_attn._compiled_call_impl is None


def _dp_worker(rank, world, port, corpus, root):
    import torch.distributed as dist

    join_gloo(rank, world, port)
    for name, fsdp in (("ddp", False), ("fsdp", True)):  # fsdp: FSDP2's MixedPrecisionPolicy instead
        pretrain(_cfg(corpus, f"{root}/{name}", steps=2, dtype="bfloat16", fsdp=fsdp))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_bf16_cast_once_on_two_ranks_equals_one_process(corpus, tmp_path):
    """Under DDP the fp32 master gradients are averaged once per step: the same figures as one process with
    the same micro-batches (expert counts over the step's micro-batches, as two ranks count them). FSDP2
    with bf16 parameters and fp32 reduction: the same up to the order of the reduction."""
    import torch.multiprocessing as mp

    mp.spawn(_dp_worker, args=(2, free_port(), str(corpus), str(tmp_path)), nprocs=2)
    pretrain(_cfg(corpus, tmp_path / "one", steps=2, dtype="bfloat16", lb_over_microbatches=True))
    logs = {}
    for name in ("ddp", "fsdp", "one"):
        logs[name] = [json.loads(ln) for ln in (tmp_path / name / "log.jsonl").read_text().splitlines()]
        logs[name] = [r for r in logs[name] if r["kind"] == "train"]
    for name, rel in (("ddp", 1e-5), ("fsdp", 1e-3)):
        for a, b in zip(logs[name], logs["one"], strict=True):
            for key in ("loss", "lb", "router_z", "grad_norm"):
                assert a[key] == pytest.approx(b[key], rel=rel), (name, key)


@pytest.mark.slow
def test_bf16_resume_refreshes_the_copy_and_continues_exactly(corpus, tmp_path):
    def train_log(out):
        recs = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "step_s")} for r in recs]

    pretrain(_cfg(corpus, tmp_path / "full", steps=3, dtype="bfloat16"))
    pretrain(_cfg(corpus, tmp_path / "cut", steps=3, dtype="bfloat16", stop_after=1))
    pretrain(_cfg(corpus, tmp_path / "cut", steps=3, dtype="bfloat16", resume=True))
    assert train_log(tmp_path / "cut") == train_log(tmp_path / "full")


@pytest.mark.slow
def test_bench_train_runs_on_cpu_and_ends_with_one_json_line():
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).parents[2] / "examples" / "bench_train.py"
    args = ["--device", "cpu", "--preset", "tiny", "--seq-len", "32", "--batch", "2", "--accum", "2", "--steps", "1"]
    args += ["--warmup", "0", "--variants", "float32/emo-slice,float32/per-expert loop", "--peak-tflops", "0.001"]
    proc = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(last["results"]) == {"float32/emo-slice", "float32/per-expert loop"}
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in last["results"].values())
    assert last["float32/speedup_vs_per_expert_loop"] > 0
