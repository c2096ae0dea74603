"""Sharded checkpoints (DCP) saved on 2 ranks and resumed on 2 and on 1; --init-from a slice; NaN stops the run.

The 2-process test runs FSDP2 over gloo on the CPU."""

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, free_port, invoke, join_gloo, tiny_train_config, train_log, word_corpus

from emo_slice.errors import CheckpointError, UsageError
from emo_slice.io.loading import load_model
from emo_slice.train.trainer import Trainer, pretrain


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("corpus") / "train.jsonl", 160)


def _cfg(corpus, out, **kw):
    return tiny_train_config(corpus, out, **{"steps": 3, "warmup_steps": 1, **kw})


_log = train_log


def _dcp_worker(rank, world, port, corpus, root):
    import torch.distributed as dist

    join_gloo(rank, world, port)
    pretrain(_cfg(corpus, f"{root}/full", fsdp=True))  # uninterrupted, 2 ranks
    pretrain(_cfg(corpus, f"{root}/cut", fsdp=True, stop_after=1))  # step-000001 saved as 2 ranks' shards
    if rank == 0:
        shutil.copytree(f"{root}/cut", f"{root}/cut1")  # to resume on one process
    dist.barrier()
    pretrain(_cfg(corpus, f"{root}/cut", fsdp=True, resume=True))  # resumed on 2 ranks
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_dcp_saved_on_two_ranks_resumes_on_two_and_on_one(corpus, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dcp_worker, args=(2, free_port(), str(corpus), str(tmp_path)), nprocs=2)
    sharded = tmp_path / "cut1" / "step-000001" / "training_state" / "sharded"
    assert sorted(p.name for p in sharded.iterdir()) == ["__0_0.distcp", "__1_0.distcp", "metadata.json"]
    md = json.loads((sharded / "metadata.json").read_text())
    experts = md["tensors"]["model/model.layers.0.mlp.w_gate_EFD"]  # FSDP2: each rank wrote its half
    assert [c["offsets"][0] for c in experts["chunks"]] == [0, 5] and "optim/model.norm.weight/exp_avg" in md["tensors"]
    assert not list(tmp_path.rglob("*.metadata")) and not list(tmp_path.rglob("*.pt"))  # no pickle written

    # 2 ranks -> 2 ranks: exactly the uninterrupted run (same ranks, same reduction order)
    assert _log(tmp_path / "cut") == _log(tmp_path / "full")
    full = load_model(tmp_path / "full" / "final").state_dict()
    resumed = load_model(tmp_path / "cut" / "final").state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)

    # 2 ranks -> 1 process: the same up to float summation order (one batch of 4 instead of 2 + 2 summed over
    # ranks); tolerances as for data parallel against one process in test_pretrain.py
    pretrain(_cfg(corpus, tmp_path / "cut1", resume=True))
    one = [r for r in _log(tmp_path / "cut1") if r["kind"] == "train"]
    ref = [r for r in _log(tmp_path / "full") if r["kind"] == "train"]
    assert [r["step"] for r in one] == [1, 2, 3]
    for r, q in zip(one, ref, strict=True):
        for key in ("loss", "lb", "router_z", "grad_norm"):
            assert r[key] == pytest.approx(q[key], rel=1e-5), key
    w = load_model(tmp_path / "cut1" / "final").state_dict()
    for k in full:
        torch.testing.assert_close(w[k], full[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.fixture(scope="module")
def stopped(corpus, tmp_path_factory):
    """A one-process run stopped at step 1 of 2 (step-000001 holds DCP shards); copy it before breaking it."""
    out = tmp_path_factory.mktemp("stopped") / "r"
    pretrain(_cfg(corpus, out, steps=2, stop_after=1))
    return out


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_sharded_metadata_is_json_and_checked(stopped, corpus, tmp_path):
    """DCP's own .metadata is a pickle torch reads with pickle.load; ours is JSON, and a tampered one is refused."""
    run = Path(shutil.copytree(stopped, tmp_path / "r"))
    sharded = run / "step-000001" / "training_state" / "sharded"
    md = json.loads((sharded / "metadata.json").read_text())
    assert md["format"] == "emo-slice-dcp-metadata" and all(s["file"] == "__0_0.distcp" for s in md["storage"])
    marker = tmp_path / "pwned"
    (sharded / ".metadata").write_bytes(pickle.dumps(Evil(marker)))  # DCP's name: never opened here
    md["storage"][0]["file"] = "../../../config.json"  # a byte range of a file outside the shards
    (sharded / "metadata.json").write_text(json.dumps(md))
    with pytest.raises(CheckpointError, match="not a shard file of this folder"):
        Trainer(_cfg(corpus, run, steps=2, resume=True))
    assert not marker.exists()


def test_a_crafted_shard_is_read_weights_only(stopped, corpus, tmp_path):
    """The tensor bytes go through torch.load(weights_only=True): a pickle that would run code is refused."""
    run = Path(shutil.copytree(stopped, tmp_path / "r"))
    sharded = run / "step-000001" / "training_state" / "sharded"
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(Evil(marker), buf)
    (sharded / "__0_0.distcp").write_bytes(buf.getvalue())
    md = json.loads((sharded / "metadata.json").read_text())
    for s in md["storage"]:
        s.update(start=0, length=len(buf.getvalue()))
    (sharded / "metadata.json").write_text(json.dumps(md))
    r = invoke("pretrain", "--data", corpus, "--out", run, "--resume")
    assert_one_line_error(r, "does not fit this run's model and optimizer", "weights-only loader refused")
    assert not marker.exists()
    r = invoke("pretrain", "--data", corpus, "--out", Path(shutil.copytree(stopped, tmp_path / "good")), "--resume")
    assert r.returncode == 0, r.stderr  # the untouched copy resumes


def _slice(tiny_ckpt, out):
    from emo_slice.io.checkpoint import Checkpoint
    from emo_slice.slicing.extract import extract
    from emo_slice.slicing.select import plan_slice

    ck = Checkpoint(tiny_ckpt)
    scores = [torch.rand(8, generator=torch.Generator().manual_seed(l)).tolist() for l in range(2)]
    plan = plan_slice(ck, "5", profile={"layers": [{"scores": {"mean-prob": s}} for s in scores]}, per_layer=True)
    extract(ck, plan, out)
    return out


def test_init_from_a_slice_trains_and_its_checkpoint_loads_back(tiny_ckpt, corpus, tmp_path):
    sl = _slice(tiny_ckpt, tmp_path / "slice")
    counts = json.loads((sl / "config.json").read_text())["num_experts_per_layer"]
    assert counts != [9, 9] and sum(counts) == 10
    t = Trainer(_cfg(corpus, tmp_path / "ft", init_from=str(sl), steps=2, lr=1e-2))
    start = load_model(sl).state_dict()
    assert all(torch.equal(t.raw.state_dict()[k], start[k]) for k in start)  # its weights, not a fresh init
    assert not t.optimizer.state  # a fresh optimizer
    path = t.run()
    out = load_model(path)
    assert out.config.num_experts_per_layer == counts
    assert [out.config.experts_in_layer(l) for l in range(2)] == counts
    assert any(not torch.equal(out.state_dict()[k], start[k]) for k in start)  # it trained
    assert [r["step"] for r in _log(tmp_path / "ft") if r["kind"] == "train"] == [1, 2]  # a fresh schedule


def test_init_from_refuses_architecture_settings(tiny_ckpt, corpus, tmp_path):
    base = ["pretrain", "--data", corpus, "--init-from", tiny_ckpt, "--steps", "1", "--seq-len", "32"]
    r = invoke(*base, "--out", tmp_path / "a", "--preset", "tiny")
    assert_one_line_error(r, "--init-from", "drop --preset")
    r = invoke(*base, "--out", tmp_path / "b", "--set", "hidden_size=32")
    assert_one_line_error(r, "architecture comes from the checkpoint", "hidden_size")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    r = invoke(*base, "--out", tmp_path / "c", "--batch-size", "4", "--set", "eval_batches=1", "--json")
    assert r.returncode == 0, r.stderr
    assert load_model(tmp_path / "c" / "final").config.num_experts == 9


def test_a_nan_loss_stops_the_run_and_is_never_saved(corpus, tmp_path):
    t = Trainer(_cfg(corpus, tmp_path / "r", steps=3, save_every=1))
    real = t.train_step

    def poisoned():
        if t.step == 1:  # after the first checkpoint: the weights go bad, so the next loss is NaN
            with torch.no_grad():
                t.raw.model.embed_tokens.weight.fill_(float("nan"))
        return real()

    t.train_step = poisoned
    with pytest.raises(UsageError, match=r"diverged at step 2: loss nan.*step-000001 \(continue it with --resume\)"):
        t.run()
    out = tmp_path / "r"
    assert (out / "latest").read_text().strip() == "step-000001"
    assert not (out / "final").exists() and not (out / "step-000002").exists()
    assert torch.isfinite(load_model(out / "step-000001").model.embed_tokens.weight).all()
