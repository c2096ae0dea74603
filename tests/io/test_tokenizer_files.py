"""Tokenizer files the ecosystem loads, and remote code only when shipped.

Every checkpoint emo-slice writes (save_model / pretrain, extract, export) holds tokenizer.json,
tokenizer_config.json and special_tokens_map.json; transformers' AutoTokenizer loads them and encodes
exactly like emo-slice's own tokenizer, for a BPE trained here with `tokenizers` and for byte-level models
(token id = UTF-8 byte), non-ASCII text included. config.json names remote code (auto_map) only when the
files are in the folder.
"""

import json
import shutil

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from emo_slice.errors import UsageError
from emo_slice.io.build import random_checkpoint, save_model
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, write_tokenizer_files
from emo_slice.model.config import EmoConfig
from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.presets import preset
from emo_slice.slicing.extract import extract
from emo_slice.slicing.select import plan_slice

transformers = pytest.importorskip("transformers")

TEXTS = [
    "héllo wörld",
    "Āā ŁŃ ğ 日本語 🙂 Ωμέγα",
    "tabs\tand\nnew lines  double  spaces\r\n",
    "def f(x): return x**2  # ünï",
    "\x00\x01 control bytes \x7f",
]
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _auto(folder):
    return transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=False)


def _encodes_alike(folder, texts=TEXTS):
    """AutoTokenizer(folder) and emo-slice's load_tokenizer(folder) give the same ids and decode back."""
    hf, ours = _auto(folder), load_tokenizer(folder)
    for text in texts:
        ids = ours.encode(text)
        assert hf(text, add_special_tokens=False).input_ids == ids, text
        assert hf(text).input_ids == ids, text  # no BOS / EOS added: EMO has none
        assert hf.decode(ids) == text == ours.decode(ids)
    return hf, ours


def _bpe() -> Tokenizer:
    """A byte-level BPE trained here with the `tokenizers` library; EOS id 0, pad id 1."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog", "héllo wörld déjà vu"] * 20, trainer)
    return Tokenizer(tok, 0, 1, "trained here")


def test_byte_level_tokenizer_json_encodes_like_bytes(tmp_path):
    written = write_tokenizer_files(
        tmp_path, ByteTokenizer(0, 1), {"eos_token_id": 0, "pad_token_id": 1, "bos_token_id": None}
    )
    assert written == list(FILES)
    hf, ours = _encodes_alike(tmp_path)
    assert ours.kind == "byte-level"  # load_tokenizer recognises the file
    for text in TEXTS:
        assert hf(text).input_ids == list(text.encode("utf-8"))  # the definition, not emo-slice's code
    assert (hf.eos_token_id, hf.pad_token_id, hf.bos_token_id) == (0, 1, None)
    cfg = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert (
        cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
        and (cfg["eos_token"], cfg["pad_token"]) == ("<0x00>", "<0x01>")
        and "bos_token" not in cfg
    )
    assert json.loads((tmp_path / "special_tokens_map.json").read_text()) == {
        "eos_token": "<0x00>",
        "pad_token": "<0x01>",
    }
    assert write_tokenizer_files(tmp_path, ByteTokenizer(0, 1), {}) == []  # existing files are kept


def test_save_model_writes_bpe_tokenizer_files(tmp_path):
    tok = _bpe()
    cfg = preset("tiny", vocab_size=tok.vocab_size)
    save_model(init_weights(EmoForCausalLM(cfg), seed=0), tmp_path / "m", tokenizer=tok)
    assert all((tmp_path / "m" / f).exists() for f in FILES)
    hf, ours = _encodes_alike(tmp_path / "m")
    assert ours.kind == "tokenizer.json"
    assert (hf.eos_token, hf.pad_token, hf.eos_token_id, hf.pad_token_id) == ("<|endoftext|>", "<|pad|>", 0, 1)
    assert "auto_map" not in json.loads((tmp_path / "m" / "config.json").read_text())


def test_extract_gives_a_slice_the_tokenizer_files(tiny_ckpt, tmp_path):
    extract(tiny_ckpt, plan_slice(Checkpoint(tiny_ckpt), experts="1,2"), tmp_path / "bytes")
    assert all((tmp_path / "bytes" / f).exists() for f in FILES)
    assert not (tiny_ckpt / "tokenizer.json").exists()  # the source is never written
    _encodes_alike(tmp_path / "bytes")
    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    tok = _bpe()
    tok.save(src)
    (src / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 7}\n'
    )
    extract(src, plan_slice(Checkpoint(src), experts="1,2"), tmp_path / "bpe")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "bpe" / name).read_bytes() == (src / name).read_bytes()  # kept as the source has them
    assert json.loads((tmp_path / "bpe" / "special_tokens_map.json").read_text()) == {
        "eos_token": "<|endoftext|>",
        "pad_token": "<|pad|>",
    }  # the tiny config's ids 0 / 1


def test_export_folder_tokenizer_loads(tiny_ckpt, tmp_path):
    from emo_slice.export import export

    export(tiny_ckpt, tmp_path / "q", "qwen2-moe")
    _encodes_alike(tmp_path / "q")


# ---- remote code --------------------------------------------------------------------------------------


def test_no_auto_map_unless_the_files_are_there(tmp_path):
    assert "auto_map" not in EmoConfig().to_dict()
    ckpt = random_checkpoint(tmp_path / "init", "tiny")
    assert "auto_map" not in json.loads((ckpt / "config.json").read_text())
    kept = EmoConfig.from_dict({**EmoConfig().to_dict(), "auto_map": {"AutoConfig": "x.Y"}})
    assert kept.to_dict()["auto_map"] == {"AutoConfig": "x.Y"}  # a source's own auto_map round-trips

    code = tmp_path / "code"
    code.mkdir()
    (code / "configuration_emo.py").write_text("# config\n")
    with pytest.raises(UsageError, match="lacks modeling_emo.py"):
        save_model(EmoForCausalLM(preset("tiny")), tmp_path / "bad", remote_code=code)
    assert not (tmp_path / "bad").exists()
    (code / "modeling_emo.py").write_text("# model\n")
    out = save_model(init_weights(EmoForCausalLM(preset("tiny")), seed=0), tmp_path / "m", remote_code=code)
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    for ref in auto_map.values():
        assert (out / (ref.split(".")[0] + ".py")).read_text() == (code / (ref.split(".")[0] + ".py")).read_text()
    assert set(auto_map) == {"AutoConfig", "AutoModelForCausalLM"}


def test_pretrain_copies_remote_code(tmp_path):
    from emo_slice.train.config import train_preset
    from emo_slice.train.trainer import pretrain

    data = tmp_path / "d.txt"
    data.write_text("apple banana cherry grape melon fruit juice sweet ripe orchard " * 40)
    code = tmp_path / "code"
    code.mkdir()
    with pytest.raises(UsageError, match="--remote-code"):
        train_preset("tiny", data=str(data), out=str(tmp_path / "x"), remote_code=str(code)).validate()
    for name in ("configuration_emo.py", "modeling_emo.py"):
        (code / name).write_text(f"# {name}\n")
    cfg = train_preset(
        "tiny",
        data=str(data),
        out=str(tmp_path / "run"),
        seq_len=16,
        batch_size=2,
        steps=1,
        warmup_steps=0,
        eval_every=0,
        save_every=0,
        eval_batches=1,
        progress=False,
        remote_code=str(code),
    )
    final = pretrain(cfg)
    assert (
        json.loads((final / "config.json").read_text())["auto_map"]["AutoModelForCausalLM"]
        == "modeling_emo.EmoForCausalLM"
    )
    assert (final / "modeling_emo.py").read_text() == "# modeling_emo.py\n"
    assert all((final / f).exists() for f in FILES)
    with torch.no_grad():
        _encodes_alike(final)
