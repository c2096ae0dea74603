"""Checkpoint reading and writing: layouts, round-trips, and every bad input."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import emo_slice
from emo_slice.io.checkpoint import Checkpoint, ShardWriter, atomic_output_dir
from emo_slice.model.config import EmoConfig
from emo_slice.errors import ConfigError, UsageError


def test_config_round_trip(fixtures):
    raw = json.loads((fixtures / "emo-tiny" / "config.json").read_text())
    cfg = EmoConfig.from_dict(raw)
    back = cfg.to_dict()
    for key, value in raw.items():
        assert back[key] == value, key
    assert EmoConfig.from_dict(back) == cfg


def test_legacy_model_type(fixtures, tmp_path):
    shutil.copytree(fixtures / "emo-tiny", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["model_type"] = "flex_olmo_noqknorm_prenorm"
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    a = emo_slice.load_model(fixtures / "emo-tiny")
    b = emo_slice.load_model(tmp_path / "m")
    ids = torch.arange(10)[None]
    assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("key,value", [("always_active_experts", [0]), ("rope_scaling", {"rope_type": "yarn"}),
                                       ("hidden_act", "gelu"), ("attention_bias", True)])
def test_unsupported_options_refused(fixtures, key, value):
    raw = json.loads((fixtures / "emo-tiny" / "config.json").read_text())
    raw[key] = value
    with pytest.raises(ConfigError, match=key):
        EmoConfig.from_dict(raw)


def test_sharded_and_single_file_read_the_same(fixtures, tmp_path):
    sharded = Checkpoint(fixtures / "emo-tiny")
    assert len({i.file for i in sharded.infos.values()}) == 7
    model = emo_slice.load_model(sharded)
    single = emo_slice.save_model(model, tmp_path / "single", max_shard_size="1GB")
    assert sorted(p.name for p in single.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
    resharded = emo_slice.save_model(model, tmp_path / "resharded", max_shard_size="100KB")
    files = sorted(p.name for p in resharded.iterdir() if p.suffix == ".safetensors")
    assert len(files) > 3 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((resharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(sharded.infos)
    assert index["metadata"]["total_size"] == sharded.total_bytes
    for path in (single, resharded):
        other = Checkpoint(path)
        for name in sharded.infos:
            assert torch.equal(other.get(name), sharded.get(name)), name


def test_shard_writer_copies_byte_ranges(fixtures, tmp_path):
    src = Checkpoint(fixtures / "emo-tiny")
    w = ShardWriter(tmp_path, max_shard_bytes=10**9)
    w.add("a", src.info("model.layers.0.mlp.gate.weight"))
    w.add("b", lambda: torch.ones(3, 2, dtype=torch.bfloat16), dtype=torch.bfloat16, shape=(3, 2))
    w.finish()
    from safetensors.torch import load_file

    out = load_file(tmp_path / "model.safetensors")
    assert torch.equal(out["a"], src.get("model.layers.0.mlp.gate.weight"))
    assert torch.equal(out["b"], torch.ones(3, 2, dtype=torch.bfloat16))


def test_dtype_chosen_at_load(fixtures):
    m = emo_slice.load_model(fixtures / "emo-tiny", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters())
    with pytest.raises(UsageError, match="--dtype"):
        emo_slice.load_model(fixtures / "emo-tiny", dtype="int4")


def test_atomic_output_dir_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="--overwrite"):
        with atomic_output_dir(tmp_path / "full"):
            pass
    assert (tmp_path / "full" / "keep.txt").read_text() == "precious"


def test_tokenizer_byte_level_and_json(fixtures, tmp_path):
    tok = emo_slice.load_tokenizer(fixtures / "emo-tiny")
    assert tok.kind == "byte-level" and tok.eos_token_id == 0
    assert tok.decode(tok.encode("héllo")) == "héllo"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    t.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"]))
    shutil.copytree(fixtures / "emo-tiny", tmp_path / "m")
    t.save(str(tmp_path / "m" / "tokenizer.json"))
    tok2 = emo_slice.load_tokenizer(tmp_path / "m")
    assert tok2.kind == "tokenizer.json"
    assert tok2.decode(tok2.encode("hello world")) == "hello world"


# ---- bad inputs through the CLI: one line, non-zero exit, no traceback --------------------------

def run_cli(*args, env_extra=None):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "emo_slice", *args], capture_output=True, text=True, env=env)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_bad_inputs(fixtures, tmp_path):
    assert_one_line_error(run_cli("info", str(tmp_path / "missing")), "no checkpoint folder")
    # truncated shard
    shutil.copytree(fixtures / "emo-tiny", tmp_path / "trunc")
    shard = tmp_path / "trunc" / "model-00003-of-00007.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert_one_line_error(run_cli("info", str(tmp_path / "trunc")), "truncated", "model-00003-of-00007")
    # config of another architecture
    shutil.copytree(fixtures / "emo-tiny", tmp_path / "llama")
    cfg = json.loads((tmp_path / "llama" / "config.json").read_text())
    cfg["model_type"] = "llama"
    (tmp_path / "llama" / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli("info", str(tmp_path / "llama")), "'llama'", "not an EMO model")
    # unknown Hub id, offline
    assert_one_line_error(run_cli("info", "allenai/no-such-model-xyz"), "allenai/no-such-model-xyz", "hf download")
    # a missing shard
    shutil.copytree(fixtures / "emo-tiny", tmp_path / "gone")
    (tmp_path / "gone" / "model-00002-of-00007.safetensors").unlink()
    assert_one_line_error(run_cli("info", str(tmp_path / "gone")), "missing")
