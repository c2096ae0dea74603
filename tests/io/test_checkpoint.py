"""Checkpoint reading and writing: layouts, round-trips, and every bad input."""

import json
import shutil

import pytest
import torch
from conftest import assert_one_line_error, run_cli

import emo_slice
from emo_slice.errors import CheckpointError, ConfigError, UsageError
from emo_slice.io import writer
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.safetensors import SafetensorsIndex, read_tensor
from emo_slice.io.writer import ShardWriter
from emo_slice.model.config import EmoConfig


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


@pytest.mark.parametrize(
    "key,value",
    [
        ("always_active_experts", [0]),
        ("rope_scaling", {"rope_type": "yarn"}),
        ("hidden_act", "gelu"),
        ("attention_bias", True),
    ],
)
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
    with pytest.raises(UsageError, match="`dtype` .int4. is not supported"):
        emo_slice.load_model(fixtures / "emo-tiny", dtype="int4")


def test_shard_writer_buffered_fallback(fixtures, tmp_path, monkeypatch):
    """Without copy_file_range (other OS or filesystem) byte ranges are copied with plain reads, same bytes."""

    def no_kernel_copy(*args):
        raise OSError("not supported")

    monkeypatch.setattr(writer.os, "copy_file_range", no_kernel_copy)
    src = Checkpoint(fixtures / "emo-tiny")
    names = sorted(src.names())[:5]
    w = ShardWriter(tmp_path, max_shard_bytes=1)  # one tensor per shard: several copies into fresh files
    for name in names:
        w.add(name, src.info(name))
    assert len(w.finish()) == len(names) + 1
    out = SafetensorsIndex(tmp_path)
    for name in names:
        assert torch.equal(out.get(name), src.get(name)), name


def test_safetensors_index_needs_no_config(tmp_path):
    """io/safetensors.py reads any safetensors folder (no config.json), with or without an index."""
    from safetensors.torch import save_file

    a, b = torch.arange(12, dtype=torch.float32).reshape(3, 4), torch.ones(5, dtype=torch.bfloat16)
    save_file({"a": a, "b": b}, str(tmp_path / "weights.safetensors"))
    idx = SafetensorsIndex(tmp_path)
    assert sorted(idx.names()) == ["a", "b"] and "a" in idx and "c" not in idx
    assert torch.equal(idx.get("a"), a) and idx.get("b").dtype == torch.bfloat16
    assert idx.get("b", torch.float32).dtype == torch.float32
    assert torch.equal(read_tensor(idx.info("a"), torch.bfloat16), a.bfloat16())
    assert idx.total_bytes == 12 * 4 + 5 * 2 and idx.stored_dtype == torch.float32
    assert idx.files() == [tmp_path / "weights.safetensors"]
    with pytest.raises(CheckpointError, match="tensor c is missing"):
        idx.info("c")
    (tmp_path / "model.safetensors.index.json").write_text('{"weight_map": ["a"]}')
    with pytest.raises(CheckpointError, match="corrupt"):
        SafetensorsIndex(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "weights.safetensors", "z": "weights.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="not in their shards"):
        SafetensorsIndex(tmp_path)
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        SafetensorsIndex(tmp_path / "nothing-here")


def test_checkpoint_read_into_checks_shape_and_casts(fixtures):
    ck = Checkpoint(fixtures / "emo-tiny")
    name = "model.layers.0.mlp.gate.weight"
    want = ck.get(name)
    dst = torch.empty(want.shape, dtype=torch.bfloat16)
    ck.read_into(name, dst)
    assert torch.equal(dst, want.bfloat16())
    with pytest.raises(CheckpointError, match="config.json implies"):
        ck.read_into(name, torch.empty(1, 2))
    with pytest.raises(CheckpointError, match="is missing from"):
        ck.get("model.no.such.weight")


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


@pytest.mark.slow
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
    assert_one_line_error(run_cli("info", str(tmp_path / "llama")), "'llama'", "does not read", "qwen3_moe")
    # unknown Hub id, offline
    assert_one_line_error(run_cli("info", "allenai/no-such-model-xyz"), "allenai/no-such-model-xyz", "hf download")
    # a missing shard
    shutil.copytree(fixtures / "emo-tiny", tmp_path / "gone")
    (tmp_path / "gone" / "model-00002-of-00007.safetensors").unlink()
    assert_one_line_error(run_cli("info", str(tmp_path / "gone")), "missing")
