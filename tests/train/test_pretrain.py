"""`emo-slice pretrain`: loss falls, checkpoints load back exactly, resume is exact, data parallel = one process."""

import json
import random

import pytest
import torch
from conftest import free_port, join_gloo, tiny_train_config, train_log

from emo_slice.errors import UsageError
from emo_slice.io.loading import load_model
from emo_slice.train.config import apply_overrides, train_preset
from emo_slice.train.trainer import Trainer, pretrain

WORDS = {
    "fruit": "apple banana cherry grape melon fruit juice sweet ripe orchard".split(),
    "cars": "engine wheel brake motor gear road drive fuel piston clutch".split(),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A two-domain JSONL corpus made here: documents of random words from one domain each."""
    rng = random.Random(0)
    p = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    with open(p, "w") as f:
        for i in range(240):
            words = WORDS["fruit" if i % 2 else "cars"]
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))}) + "\n")
    return p


_cfg, _train_log = tiny_train_config, train_log


def test_loss_falls_and_checkpoint_loads_back_with_identical_logits(corpus, tmp_path):
    t = Trainer(_cfg(corpus, tmp_path / "run", steps=25, batch_size=8, warmup_steps=3, lr=5e-3, eval_every=10))
    path = t.run()
    log = _train_log(tmp_path / "run")
    train = [r for r in log if r["kind"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 1.5, (train[0]["loss"], train[-1]["loss"])
    evals = [r for r in log if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [10, 20, 25] and "val_loss_pool_2" in evals[-1]
    assert evals[-1]["val_loss_no_pool"] < evals[0]["val_loss_no_pool"]
    for key in ("lb", "router_z", "lm_z", "grad_norm", "lr"):
        assert math_ok(train[-1][key])
    assert len(train[-1]["imbalance"]) == 2 and len(train[-1]["doc_entropy"]) == 2
    assert path == tmp_path / "run" / "final"
    assert (path / "training_state" / "state.safetensors").exists() and (path / "config.json").exists()
    assert (path / "training_state" / "sharded" / "metadata.json").exists()  # DCP shards, JSON metadata
    assert not (path / "training_state.pt").exists()  # no pickle
    loaded = load_model(path, dtype="float32")
    ids = torch.randint(0, 256, (2, 32))
    t.raw.eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids), t.raw(ids))
    assert json.loads((path / "config.json").read_text())["model_type"] == "emo"


def math_ok(v):
    return isinstance(v, float) and v == v and abs(v) < 1e6


def test_resume_reproduces_the_uninterrupted_run_exactly(corpus, tmp_path):
    full = pretrain(_cfg(corpus, tmp_path / "full", eval_every=3))
    _ = pretrain(_cfg(corpus, tmp_path / "cut", eval_every=3, stop_after=3))
    assert (tmp_path / "cut" / "latest").read_text().strip() == "step-000003"
    assert not (tmp_path / "cut" / "final").exists()
    resumed = pretrain(_cfg(corpus, tmp_path / "cut", eval_every=3, resume=True))
    assert _train_log(tmp_path / "full") == _train_log(tmp_path / "cut")
    a, b = load_model(full).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_save_leaves_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    import emo_slice.train.checkpointing as ckpt

    calls, real = [], ckpt.write_manifest

    def flaky(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed during the save")
        return real(path, *a, **k)

    monkeypatch.setattr(ckpt, "write_manifest", flaky)
    with pytest.raises(KeyboardInterrupt):
        pretrain(_cfg(corpus, tmp_path / "run", save_every=2))
    out = tmp_path / "run"
    assert (out / "latest").read_text().strip() == "step-000002"
    load_model(out / "step-000002")  # intact
    assert not (out / "step-000004").exists() and not list(out.glob(".step-000004*"))  # no temporaries left
    monkeypatch.setattr(ckpt, "write_manifest", real)
    pretrain(_cfg(corpus, out, save_every=2, resume=True))
    assert (out / "latest").read_text().strip() == "final"


def _dp_worker(rank, world, port, corpus, root):
    import torch.distributed as dist

    join_gloo(rank, world, port)  # one group for both runs (pretrain uses it and leaves it open)
    for name, fsdp in (("ddp", False), ("fsdp", True)):
        pretrain(_cfg(corpus, f"{root}/{name}", steps=3, micro_batch_size=2, fsdp=fsdp))
    dist.barrier()  # both ranks done before either tears the group down
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process(corpus, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_dp_worker, args=(2, free_port(), str(corpus), str(tmp_path)), nprocs=2)
    one = pretrain(_cfg(corpus, tmp_path / "one", steps=3))  # the same global batch of 4 in one forward
    # one process, two micro-batches, expert counts over the step's micro-batches
    acc = pretrain(_cfg(corpus, tmp_path / "acc", steps=3, micro_batch_size=2, lb_over_microbatches=True))
    ref_log = [r for r in _train_log(tmp_path / "one") if r["kind"] == "train"]
    ref_w = load_model(one).state_dict()
    for name in ("ddp", "fsdp", "acc"):
        log = [r for r in _train_log(tmp_path / name) if r["kind"] == "train"]
        for r, q in zip(log, ref_log, strict=True):
            for key in ("loss", "lb", "router_z", "grad_norm"):
                assert r[key] == pytest.approx(q[key], rel=1e-5), (name, key)
        w = load_model(tmp_path / name / "final").state_dict()
        for k in ref_w:
            torch.testing.assert_close(w[k], ref_w[k], rtol=1e-4, atol=1e-5, msg=f"{name} {k}")
    assert acc.name == "final"


def test_standard_router_is_the_same_model_without_pool(corpus, tmp_path):
    std = Trainer(_cfg(corpus, tmp_path / "std", router="standard"))
    emo = Trainer(_cfg(corpus, tmp_path / "emo"))
    assert std.pool is None and std.doc_attn is False
    assert emo.pool == (2, 9) and emo.doc_attn is True
    assert std.mcfg == emo.mcfg
    a, b = dict(std.raw.named_parameters()), dict(emo.raw.named_parameters())
    assert all(torch.equal(a[k], b[k]) for k in a)  # same init
    rec = std.train_step()
    assert rec["lb"] > 0 and rec["router_z"] > 0
    forced = Trainer(_cfg(corpus, tmp_path / "std2", router="standard", doc_attention=True))
    assert forced.doc_attn is True


def test_trained_tokenizer_is_saved_with_the_checkpoint(corpus, tmp_path):
    from emo_slice.io.tokenizer import load_tokenizer

    path = pretrain(_cfg(corpus, tmp_path / "bpe", tokenizer="train", vocab_size=300, steps=1))
    tok = load_tokenizer(path)
    assert tok.kind == "tokenizer.json" and tok.eos_token_id == 0
    assert tok.decode(tok.encode("apple engine")) == "apple engine"
    assert load_model(path).config.vocab_size >= 300
    bins = sum(f.stat().st_size for f in (tmp_path / "bpe" / "data" / "train").glob("shard-*.bin")) // 4
    meta = json.loads((tmp_path / "bpe" / "data" / "meta.json").read_text())
    assert bins == meta["train_tokens"] and meta["eos_token_id"] == 0


def test_overrides_and_bad_inputs(corpus, tmp_path):
    cfg = apply_overrides(train_preset("tiny"), ["lr=1e-3", "hidden_size=128", "doc_attention=false", "pool_max=none"])
    assert cfg.lr == 1e-3 and cfg.model == {"hidden_size": 128} and cfg.doc_attention is False and cfg.pool_max is None
    with pytest.raises(UsageError, match="unknown setting"):
        apply_overrides(train_preset("tiny"), ["nope=1"])
    with pytest.raises(UsageError, match="--router"):
        Trainer(_cfg(corpus, tmp_path / "x", router="moe"))
    with pytest.raises(UsageError, match="micro-batch"):
        Trainer(_cfg(corpus, tmp_path / "x", micro_batch_size=3))
    assert not (tmp_path / "x").exists()  # nothing written for bad input


def test_cli_pretrain(corpus, tmp_path):
    from typer.testing import CliRunner

    from emo_slice.cli import app

    out = tmp_path / "cli"
    args = [
        "pretrain",
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--seq-len",
        "32",
        "--batch-size",
        "4",
        "--set",
        "eval_batches=1",
        "--json",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert summary["steps"] == 2 and summary["checkpoint"].endswith("final")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--resume" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, args[:-1] + ["--set", "pool_min=1", "--overwrite"])
    assert r.exit_code == 2 and "pool_min" in r.output
    assert (out / "final").exists()  # the failed call did not touch the previous run
