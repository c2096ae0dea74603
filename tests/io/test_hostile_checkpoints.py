"""Hostile checkpoints: every broken or malicious folder gives exit 2, one
`error:` line without a traceback, nothing written, and the source unchanged; nothing outside the folder
is ever read or copied.

Each case breaks a copy of the tiny checkpoint (one model.safetensors) or of the sharded reference fixture
(index + 7 shards) and runs the command the issue names.
"""

import hashlib
import json
import math
import os
import shutil
import stat
import struct
import threading

import pytest
import torch
from conftest import assert_one_line_error, invoke
from safetensors import safe_open
from safetensors.torch import save_file

from emo_slice.errors import CheckpointError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.safetensors import SafetensorsIndex

INDEX = "model.safetensors.index.json"


def _tree(folder) -> dict:
    """Every entry under folder: sha256 of a file, the target of a link, the kind of anything else (never opened)."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for p in (os.path.join(root, n) for n in dirs + files):
            mode = os.lstat(p).st_mode
            out[os.path.relpath(p, folder)] = (
                "-> " + os.readlink(p)
                if stat.S_ISLNK(mode)
                else hashlib.sha256(open(p, "rb").read()).hexdigest()
                if stat.S_ISREG(mode)
                else f"mode {mode:o}"
            )
    return out


def _refused(proc, folder, *needles, outside=None) -> str:
    """One error line holding needles; the folder as it was before the command; nothing new next to it."""
    line = assert_one_line_error(proc, *needles)
    assert _tree(folder) == outside["before"], "the source changed"
    assert sorted(os.listdir(folder.parent)) == outside["siblings"], "something was written"
    return line


def _snap(folder) -> dict:
    return {"before": _tree(folder), "siblings": sorted(os.listdir(folder.parent))}


def _split(path) -> tuple[dict, bytes]:
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _write(path, header, data: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _by_offset(header) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _edit_header(folder, edit) -> None:
    """Apply edit(header) to folder/model.safetensors (when it returns bytes, they replace the header)."""
    header, data = _split(folder / "model.safetensors")
    new = edit(header)
    _write(folder / "model.safetensors", new if isinstance(new, bytes) else header, data)


def _task(tmp_path):
    path = tmp_path / "task.jsonl"
    rows = [{"context": f"item {i} is", "choices": [" red", " green"], "label": i % 2} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(cmd, model, tmp_path):
    """The CLI command on model; its output, if any, would go to tmp_path/out (which must stay absent)."""
    out = tmp_path / "work" / "out"
    if cmd == "info":
        return invoke("info", model)
    if cmd == "extract":
        return invoke("extract", model, "--keep", "4", "--method", "random", "--out", out)
    return invoke("eval", model, "--task", _task(tmp_path / "work"), "--out", out)


@pytest.fixture
def tiny_copy(tiny_ckpt, tmp_path):
    (tmp_path / "work").mkdir()
    return shutil.copytree(tiny_ckpt, tmp_path / "src" / "m")


@pytest.fixture
def sharded_copy(fixtures, tmp_path):
    (tmp_path / "work").mkdir()
    return shutil.copytree(fixtures / "emo-tiny", tmp_path / "src" / "m")


# ---- safetensors headers are validated ----------------------------------------------------------


def _reverse(h):
    e = h[_by_offset(h)[0]]
    e["data_offsets"] = e["data_offsets"][::-1]


def _negative(h):
    e = h[_by_offset(h)[0]]
    e["data_offsets"] = [-64, e["data_offsets"][1]]


def _grow_shape(h):
    h["model.embed_tokens.weight"]["shape"][0] += 1


def _overlap(h):
    second = h[_by_offset(h)[1]]  # the embedding comes first: 64 KB, so 4 bytes back stays after its start
    second["data_offsets"] = [o - 4 for o in second["data_offsets"]]


def _gap(h):
    last = h[_by_offset(h)[-1]]
    last["data_offsets"] = [last["data_offsets"][0] + 4, last["data_offsets"][1] + 4]


HEADER_CASES = {
    "reversed data_offsets": ("eval", _reverse, ["reversed data_offsets"]),
    "negative data_offsets": ("eval", _negative, ["data_offsets [-64"]),
    "shape larger than its byte range": ("info", _grow_shape, ["model.embed_tokens.weight", "data_offsets span"]),
    "overlapping offsets": ("info", _overlap, ["overlaps the tensor before it"]),
    "header a JSON list": ("info", lambda h: b"[]", ["a JSON list, not an object"]),
    "entry without data_offsets": (
        "info",
        lambda h: h["model.norm.weight"].pop("data_offsets"),
        ["has no data_offsets"],
    ),
    "entry a string": ("info", lambda h: h.update({"model.norm.weight": "F32"}), ["'F32', not an object"]),
    "dtype XYZ": ("info", lambda h: h["model.norm.weight"].update(dtype="XYZ"), ["dtype 'XYZ'"]),
    "extract of a file the library rejects": ("extract", _gap, ["leaves a gap"]),
    "header not UTF-8": ("info", lambda h: json.dumps(h).encode().replace(b"{", b"{\xff", 1), ["not UTF-8"]),
    "duplicate tensor key": ("info", lambda h: b'{"a": 1, ' + json.dumps(h).encode()[1:-1] + b', "a": 2}', ["twice"]),
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_safetensors_headers_are_validated(tiny_copy, tmp_path, case):
    cmd, edit, needles = HEADER_CASES[case]
    _edit_header(tiny_copy, edit)
    snap = _snap(tiny_copy)
    _refused(_run(cmd, tiny_copy, tmp_path), tiny_copy, "model.safetensors", *needles, outside=snap)
    assert os.listdir(tmp_path / "work") in ([], ["task.jsonl"])  # no output, no temporary folder


def test_extract_writes_what_the_library_reads(tiny_ckpt, tmp_path):
    out = tmp_path / "slice"
    assert invoke("extract", tiny_ckpt, "--keep", "4", "--method", "random", "--out", out).returncode == 0
    ours = SafetensorsIndex(out)
    for shard in ours.files():
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                assert torch.equal(f.get_tensor(name), ours.get(name)), name


# ---- nothing outside the folder is read or copied ---------------------------------------------


def _point_index(folder, target: str) -> None:
    index = json.loads((folder / INDEX).read_text())
    index["weight_map"]["model.norm.weight"] = target
    (folder / INDEX).write_text(json.dumps(index))


@pytest.mark.parametrize("cmd", ["info", "extract"])
@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_index_paths_stay_in_the_folder(sharded_copy, tmp_path, cmd, where):
    other = tmp_path / "other"
    other.mkdir()
    norm_shard = json.loads((sharded_copy / INDEX).read_text())["weight_map"]["model.norm.weight"]
    shutil.copy(sharded_copy / norm_shard, other / "model.safetensors")  # a real, readable file out there
    target = "../../other/model.safetensors" if where == "relative" else str(other / "model.safetensors")
    _point_index(sharded_copy, target)
    snap = _snap(sharded_copy)
    line = _refused(_run(cmd, sharded_copy, tmp_path), sharded_copy, "not a plain", outside=snap)
    assert "model.safetensors" in line and os.listdir(tmp_path / "work") == []


def test_symlinked_extra_file_is_not_copied(tiny_copy, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-CONTENTS")
    os.symlink(secret, tiny_copy / "tokenizer_config.json")  # as `-> /etc/shadow`
    snap = _snap(tiny_copy)
    _refused(
        _run("extract", tiny_copy, tmp_path),
        tiny_copy,
        "tokenizer_config.json",
        "outside the checkpoint folder",
        outside=snap,
    )
    assert os.listdir(tmp_path / "work") == []
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        Checkpoint(tiny_copy).extra_files()


def test_side_files_read_only_inside_the_folder(tiny_copy, tmp_path):
    ck = Checkpoint(tiny_copy)
    assert ck.side_json("slice.json") is None and ck.side_json("generation_config.json") is not None
    (tmp_path / "slice.json").write_text('{"kept_experts": [0]}')
    os.symlink(tmp_path / "slice.json", tiny_copy / "slice.json")
    with pytest.raises(CheckpointError, match="outside the checkpoint folder"):
        ck.side_json("slice.json")
    os.unlink(tiny_copy / "slice.json")
    os.mkfifo(tiny_copy / "slice.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        ck.side_json("slice.json")
    assert ck.extra_files() == [
        tiny_copy / n
        for n in sorted(os.listdir(tiny_copy))
        if n not in ("model.safetensors", "config.json", "slice.json")
    ]  # the FIFO is no extra file


@pytest.mark.parametrize(
    "name,cmd", [("model.safetensors", "info"), ("tokenizer.json", "eval"), ("config.json", "info")]
)
def test_symlinks_out_of_the_folder_refused(tiny_copy, tmp_path, name, cmd):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    if name == "tokenizer.json":
        from emo_slice.io.tokenizer import byte_tokenizer_json

        (outside / name).write_text(byte_tokenizer_json())
    else:
        shutil.move(tiny_copy / name, outside / name)
    os.symlink(outside / name, tiny_copy / name)
    snap = _snap(tiny_copy)
    _refused(_run(cmd, tiny_copy, tmp_path), tiny_copy, name, "outside the checkpoint folder", outside=snap)


def _hub_cache(src, root, repo="models--org--tiny"):
    """src laid out as the Hugging Face cache does: snapshots/<rev>/name -> ../../blobs/<sha256>."""
    snap, blobs = root / repo / "snapshots" / "abc123", root / repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for p in src.iterdir():
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        shutil.copy(p, blobs / digest)
        os.symlink(f"../../blobs/{digest}", snap / p.name)
    return snap


def test_hub_cache_links_followed_only_within_their_repository(tiny_ckpt, tmp_path):
    snap = _hub_cache(tiny_ckpt, tmp_path / "hub")
    proc = invoke("info", snap, "--json")
    assert proc.returncode == 0, proc.stderr
    ck, ref = Checkpoint(snap), Checkpoint(tiny_ckpt)
    assert all(torch.equal(ck.get(n), ref.get(n)) for n in ref.names())
    other = _hub_cache(tiny_ckpt, tmp_path / "hub", "models--evil--x")  # a link into another repository's blobs
    os.unlink(snap / "model.safetensors")
    os.symlink(os.path.relpath(os.path.realpath(other / "model.safetensors"), snap), snap / "model.safetensors")
    assert_one_line_error(invoke("info", snap), "model.safetensors", "outside the checkpoint folder")


def test_links_inside_the_folder_are_followed(tiny_copy):
    (tiny_copy / "data").mkdir()
    shutil.move(tiny_copy / "model.safetensors", tiny_copy / "data" / "weights.safetensors")
    os.symlink("data/weights.safetensors", tiny_copy / "model.safetensors")
    proc = invoke("info", tiny_copy, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["tensors"] == 71


# ---- config values and index weight_map typed and in range ----------------------------------

CONFIG_CASES = [
    ("num_experts", "nine", "num_experts='nine' (str); expected a positive integer"),
    ("num_attention_heads", 0, "num_attention_heads=0 (int); expected a positive integer"),
    ("num_experts_per_layer", 9, "num_experts_per_layer=9 (int); expected null or a list of 2 positive integers"),
    ("num_experts_per_layer", [9, "9"], "num_experts_per_layer=[9, '9'] (list)"),
    ("hidden_size", True, "hidden_size=True (bool); expected a positive integer"),
    ("eos_token_id", 256, "eos_token_id=256 (int); expected null or a token id in 0..255"),
    ("rope_theta", -1.0, "rope_theta=-1.0 (float); expected a positive finite number"),
    ("rope_theta", float("nan"), "rope_theta=nan (float); expected a positive finite number"),
    ("rms_norm_eps", "1e-6", "rms_norm_eps='1e-6' (str); expected a positive finite number"),
    ("tie_word_embeddings", "no", "tie_word_embeddings='no' (str); expected true or false"),
    ("num_hidden_layers", 10**12, "config.json implies"),  # refused at once, not after a loop over 10**12 layers
    ("num_attention_heads", 8, "odd head size"),  # 64 / 8 = 8 is even: the test makes hidden_size 72 (9 each)
]


@pytest.mark.parametrize("key,value,needle", CONFIG_CASES)
def test_config_values_typed_and_in_range(tiny_copy, tmp_path, key, value, needle):
    cfg = json.loads((tiny_copy / "config.json").read_text())
    cfg[key] = value
    if needle == "odd head size":
        cfg["hidden_size"], cfg["num_key_value_heads"] = 72, 8  # 72 / 8 = 9: rotary needs an even head size
    (tiny_copy / "config.json").write_text(json.dumps(cfg))
    snap = _snap(tiny_copy)
    _refused(_run("info", tiny_copy, tmp_path), tiny_copy, needle, outside=snap)


def test_config_not_utf8_is_one_line(tiny_copy, tmp_path):
    (tiny_copy / "config.json").write_bytes(b'{"model_type": "emo\xff"}')
    snap = _snap(tiny_copy)
    _refused(_run("info", tiny_copy, tmp_path), tiny_copy, "config.json", "not UTF-8", outside=snap)


INDEX_CASES = {
    "weight_map a list": (lambda wm: list(wm), "weight_map that is a list"),
    "weight_map holds a number": (lambda wm: {**wm, "model.norm.weight": 5}, "weight_map holds 5"),
    "weight_map holds null": (lambda wm: {**wm, "model.norm.weight": None}, "weight_map holds None"),
    "weight_map entry '.'": (lambda wm: {**wm, "model.norm.weight": "."}, "shard '.'"),
    "weight_map entry a folder name": (lambda wm: {**wm, "model.norm.weight": "sub.safetensors"}, "not a regular file"),
}


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_index_weight_map_typed(sharded_copy, tmp_path, case):
    edit, needle = INDEX_CASES[case]
    (sharded_copy / "sub.safetensors").mkdir()
    index = json.loads((sharded_copy / INDEX).read_text())
    index["weight_map"] = edit(index["weight_map"])
    (sharded_copy / INDEX).write_text(json.dumps(index))
    snap = _snap(sharded_copy)
    _refused(
        _run("info", sharded_copy, tmp_path), sharded_copy, INDEX if "shard" not in needle else "", needle, outside=snap
    )


def test_index_not_an_object_is_one_line(sharded_copy, tmp_path):
    (sharded_copy / INDEX).write_text('[{"weight_map": {}}]')
    snap = _snap(sharded_copy)
    _refused(_run("info", sharded_copy, tmp_path), sharded_copy, INDEX, "not a JSON object", outside=snap)


# ---- info reports the tensors, refuses what disagrees, never hangs ---------------------------


def test_info_counts_come_from_the_tensors(tiny_ckpt):
    proc = invoke("info", tiny_ckpt, "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    numel = sum(math.prod(i.shape) for i in Checkpoint(tiny_ckpt).infos.values())
    assert data["parameters"]["total"] == numel and data["tensors"] == len(Checkpoint(tiny_ckpt).infos)


def test_info_refuses_a_file_with_no_tensors(tiny_copy, tmp_path):
    save_file({}, str(tiny_copy / "model.safetensors"))
    snap = _snap(tiny_copy)
    proc = _run("info", tiny_copy, tmp_path)
    _refused(proc, tiny_copy, "holds no tensors", outside=snap)
    assert "169" not in proc.stdout and proc.stdout.strip() == ""


def _drop_tensor(folder):
    header, data = _split(folder / "model.safetensors")
    ck = SafetensorsIndex(folder)
    tensors = {n: ck.get(n) for n in ck.names() if n != "model.layers.1.mlp.experts.3.up_proj.weight"}
    save_file(tensors, str(folder / "model.safetensors"), metadata=header["__metadata__"])


def _int_tensor(folder):
    ck = SafetensorsIndex(folder)
    tensors = {n: ck.get(n) for n in ck.names()}
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int32)
    save_file(tensors, str(folder / "model.safetensors"))


def _extra_tensor(folder):
    ck = SafetensorsIndex(folder)
    save_file(
        {**{n: ck.get(n) for n in ck.names()}, "model.rotary.inv_freq": torch.ones(4)},
        str(folder / "model.safetensors"),
    )


def _wider_config(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] *= 2
    (folder / "config.json").write_text(json.dumps(cfg))


DISAGREE = {
    "a tensor missing": (_drop_tensor, "lacks 1 tensors that config.json implies"),
    "a shape config.json does not imply": (_wider_config, "config.json implies [64, 64]"),
    "an integer tensor": (_int_tensor, "model.norm.weight is stored as I32, not a float type"),
    "a tensor config.json does not imply": (_extra_tensor, "model.rotary.inv_freq"),
}


@pytest.mark.parametrize("case", list(DISAGREE))
def test_info_refuses_tensors_that_disagree(tiny_copy, tmp_path, case):
    edit, needle = DISAGREE[case]
    edit(tiny_copy)
    snap = _snap(tiny_copy)
    proc = _run("info", tiny_copy, tmp_path)
    _refused(proc, tiny_copy, needle, outside=snap)
    assert proc.stdout.strip() == ""


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", INDEX])
def test_info_never_hangs_on_a_fifo(tiny_copy, name):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    if name != INDEX:
        os.unlink(tiny_copy / name)
    os.mkfifo(tiny_copy / name)
    snap = _snap(tiny_copy)
    result = []
    worker = threading.Thread(target=lambda: result.append(invoke("info", tiny_copy)), daemon=True)
    worker.start()
    worker.join(timeout=60)  # a reader that opens the FIFO blocks for ever: the test fails instead of hanging
    assert result, f"info hung on a FIFO named {name}"
    _refused(result[0], tiny_copy, name, "not a regular file", outside=snap)
