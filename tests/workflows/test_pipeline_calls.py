"""The workflows behind the thin commands: profile, extract (workflows/slice.py) and pretrain's configuration and
summary (workflows/pretrain.py); library errors name the parameters, the command line shows its flags."""

import json

import pytest
import torch
from conftest import invoke

from emo_slice.errors import UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.profile import ProfileSettings
from emo_slice.workflows.pretrain import check_config, resolve_config, run_summary, summary_line
from emo_slice.workflows.profile import profile_summary, write_profile
from emo_slice.workflows.slice import PER_LAYER_NOTE, make_slice


def test_extract_save_dtype_is_the_stored_dtype(fixtures, tmp_path):
    proc = invoke(
        "extract",
        fixtures / "emo-tiny",
        "--experts",
        "1,3,4,6",
        "--save-dtype",
        "bfloat16",
        "--out",
        tmp_path / "bf",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["kept_experts"][0] == [1, 3, 4, 6, 8]
    ck = Checkpoint(tmp_path / "bf")
    assert ck.stored_dtype == torch.bfloat16 and ck.config.num_experts == 5


def test_make_slice_checks_everything_before_work(fixtures, tmp_path):
    out = tmp_path / "s"
    for kwargs, needle in [
        (dict(experts="1,2", save_dtype="int8"), "`save_dtype` 'int8'"),
        (dict(examples="x.txt", keep="4", dtype="int8"), "`dtype` 'int8'"),
        (dict(experts="1,2", dtype="bfloat16"), "pass `save_dtype`"),  # the old meaning of --dtype
        (dict(experts="1,2", max_shard_size="lots"), "--max-shard-size"),
        (dict(keep="4", method="random", greedy=True), "`greedy` applies with `examples`"),
        (dict(keep="99", examples=str(tmp_path / "never-read.txt")), "more than"),
    ]:
        with pytest.raises(UsageError, match=needle):
            make_slice(str(fixtures / "emo-tiny"), out, **kwargs)
    assert not out.exists()


def test_make_slice_profiles_examples_with_the_compute_dtype(fixtures, tmp_path):
    docs = tmp_path / "docs.txt"
    docs.write_text("def f(x):\n    return x + 1\n" * 20)
    warnings, seen = [], set()
    manifest = make_slice(
        str(fixtures / "emo-tiny"),
        tmp_path / "s",
        keep="4",
        examples=str(docs),
        dtype="bfloat16",
        per_layer=True,
        warn=warnings.append,
        progress=lambda label, done, total, *_: seen.add(label),
    )
    assert manifest["profile"]["settings"]["dtype"] == "bfloat16" and manifest["per_layer"]
    assert PER_LAYER_NOTE in warnings and seen == {"profiling", "writing slice"}
    prof, path = write_profile(str(fixtures / "emo-tiny"), tmp_path / "p.json", ProfileSettings(examples=str(docs)))
    summary = profile_summary(prof, path)
    assert summary["layers"] == 2 and summary["tokens"] == prof["tokens"] > 0 and summary["greedy"] is None
    with pytest.raises(UsageError, match="--overwrite"):
        write_profile(str(fixtures / "emo-tiny"), path, ProfileSettings(examples=str(docs)))


def test_resolve_config_order_and_checks(tmp_path):
    cfg = resolve_config(
        tmp_path / "run", preset="tiny", options={"lr": 0.5, "steps": None}, settings=["lr=0.25", "hidden_size=32"]
    )
    assert cfg.lr == 0.25 and cfg.steps == 40 and cfg.model == {"hidden_size": 32} and cfg.out.endswith("run")
    check_config(cfg)
    with pytest.raises(UsageError, match="micro-batch"):
        check_config(resolve_config(tmp_path, preset="tiny", options={"micro_batch_size": 3}))
    with pytest.raises(UsageError, match="micro-batch"):
        check_config(resolve_config(tmp_path, preset="tiny"), world_size=3)
    (tmp_path / "train_config.json").write_text("{not json")
    with pytest.raises(Exception, match="train_config.json"):
        resolve_config(tmp_path, resume=True)


def test_run_summary_reads_the_log(tmp_path):
    (tmp_path / "log.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"kind": "train", "step": 1, "loss": 5.0},
                {"kind": "eval", "step": 2, "val_loss_no_pool": 4.5},
                {"kind": "train", "step": 2, "loss": 4.0},
            ]
        )
    )
    s = run_summary(tmp_path, tmp_path / "final", world_size=2)
    assert s["steps"] == 2 and s["final_loss"] == 4.0 and s["eval"]["step"] == 2 and s["world_size"] == 2
    assert (
        summary_line(s) == f"done: step 2, train loss 4.0000, validation loss no_pool 4.5000; checkpoint "
        f"{tmp_path / 'final'}"
    )
