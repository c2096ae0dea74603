"""Fuzz test of the checkpoint reader (io/safetensors.py): seeded random mutations of a valid safetensors
file and of a valid sharded index.

Every mutation must give either a clean load or exactly one EmoSliceError with a one-line message; never
another exception. A clean load is checked bit for bit: against the safetensors library reading the same
file (so the reader accepts nothing the library refuses), against the bytes of the data section each
tensor claims, and against the original tensor whenever name, dtype and shape are unchanged. An index
load must read only shards inside the folder, and every tensor it gives must equal the original.
"""

import json
import math
import random
import struct
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save, save_file

from emo_slice.errors import EmoSliceError
from emo_slice.io.safetensors import INDEX_NAME, SafetensorsIndex

SEED = 20240611
N_HEADER = 2500
N_INDEX = 1000


def _original() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.f32": torch.randn(3, 4, generator=g),
        "b.bf16": torch.randn(5, generator=g).bfloat16(),
        "c.i64": torch.arange(6).reshape(2, 3),
        "d.u8": torch.arange(7, dtype=torch.uint8),
        "e.empty": torch.zeros(0, 3),
        "f.scalar": torch.tensor(1.5, dtype=torch.float16),
        "g.bool": torch.tensor([True, False, True]),
    }


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _split(blob: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _rewrite(path, blob: bytes) -> None:
    """Replace path's contents (unlink first: truncating a file in place is slow on ext4)."""
    path.unlink(missing_ok=True)
    path.write_bytes(blob)


def _pack(header_bytes: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header_bytes)) + header_bytes + data


# ---- mutations of one safetensors file ------------------------------------------------------------------

ODD_VALUES = [None, True, -1, 1.5, "7", [], {}, [1, 2, 3], [[0]], 2**64, 10**30, -(2**63)]


def _two_ints(x) -> bool:
    return isinstance(x, list) and len(x) == 2 and all(type(i) is int for i in x)


def _edit_entry(rng: random.Random, h: dict, data_len: int) -> str:
    names = [k for k, v in h.items() if isinstance(v, dict) and _two_ints(v.get("data_offsets"))]
    if not names:
        return "none"
    name = rng.choice(names)
    e = h[name]
    a, b = e["data_offsets"]
    kind = rng.randrange(13)
    if kind == 0:
        e["data_offsets"] = [b, a]
    elif kind == 1:
        e["data_offsets"] = rng.choice([[-8, b], [a, -1], [a - 4, b - 4], [a + 2, b + 2], [a, data_len + 8]])
    elif kind == 2:
        other = h[rng.choice(names)]
        e["data_offsets"], other["data_offsets"] = list(other["data_offsets"]), [a, b]
    elif kind == 3:
        e["data_offsets"] = rng.choice(ODD_VALUES + [[a], [a, b, b], [float(a), b], [str(a), b], [a, b + 0.0]])
    elif kind == 4:
        e["dtype"] = rng.choice(["XYZ", "F8_E4M3", "f32", "", "F32 ", "U16", "F32", "F16", "BF16", "I32", "I8"])
    elif kind == 5:
        e["dtype"] = rng.choice(ODD_VALUES)
    elif kind == 6:
        shape = list(e["shape"])
        op = rng.randrange(5)
        if op == 0 and shape:
            shape[rng.randrange(len(shape))] += rng.choice([-1, 1, 2**40])
        elif op == 1:
            shape.append(rng.choice([1, 2, 0]))
        elif op == 2 and shape:
            shape.pop(rng.randrange(len(shape)))
        elif op == 3:
            shape = shape[::-1]  # same bytes, another shape: harmless
        else:
            shape = rng.choice([[-1], [2**63 - 1, 0, 2**63 - 1, 5], [0] * 200, [True, 2]])
        e["shape"] = shape
    elif kind == 7:
        e["shape"] = rng.choice(ODD_VALUES)
    elif kind == 8:
        del e[rng.choice(["dtype", "shape", "data_offsets"])]
    elif kind == 9:
        e[rng.choice(["extra", "offsets", "dtype2"])] = rng.choice(ODD_VALUES)  # unknown keys: harmless
    elif kind == 10:
        h[name] = rng.choice(ODD_VALUES + ["F32", "a string"])
    elif kind == 11:
        del h[name]
    else:
        h[name + rng.choice(["", ".x", "\u00e9", "\n"])] = h.pop(name)  # renamed: harmless
    return f"entry {kind}"


def _mutate_file(rng: random.Random, blob: bytes) -> tuple[str, bytes]:
    header, data = _split(blob)
    hbytes = blob[8 : 8 + struct.unpack("<Q", blob[:8])[0]]
    kind = rng.randrange(10)
    if kind == 0:  # flip bytes of the length prefix or the header
        b = bytearray(blob)
        for _ in range(rng.choice([1, 1, 2, 4])):
            b[rng.randrange(8 + len(hbytes))] ^= rng.randrange(1, 256)
        return "flip", bytes(b)
    if kind == 1:
        return "truncate", blob[: rng.randrange(len(blob))]
    if kind == 2:
        n = rng.choice([0, 1, len(hbytes) - 1, len(hbytes) + 1, len(hbytes) + 8, 2**63, 2**64 - 1, 100_000_001])
        return "length", struct.pack("<Q", n) + blob[8:]
    if kind == 3:
        return "data", blob + b"\0" * rng.randrange(1, 9) if rng.random() < 0.5 else blob[:-1]
    if kind == 4:  # the header as something else than an object, or not JSON at all
        body = rng.choice(
            [
                b"[]",
                b'"x"',
                b"1",
                b"null",
                b"{",
                b"",
                b"\xff\xfe{}",
                b"[" * 5000 + b"]" * 5000,
                b'{"a": NaN}',
                json.dumps(list(header.items())).encode(),
                hbytes + b"\0",
            ]
        )
        return "not an object", _pack(body, data)
    if kind == 5:  # harmless: spaces around the JSON (the writer pads with spaces)
        return "padding", _pack(b" " * rng.randrange(4) + hbytes + b" " * rng.randrange(1, 16), data)
    if kind == 6:
        meta = rng.choice([None, 1, [], {"x": 1}, {"x": None}, {"format": "pt"}, {"k": "v" * 100}])
        header["__metadata__"] = meta
        if rng.random() < 0.3:
            del header["__metadata__"]
        return "metadata", _pack(json.dumps(header).encode(), data)
    if kind == 7:  # a duplicate key, written raw
        name = rng.choice([k for k in header if k != "__metadata__"])
        dup = b'{"%s": %s, ' % (name.encode(), json.dumps(header[name]).encode())
        return "duplicate", _pack(dup + hbytes.lstrip()[1:], data)
    for _ in range(rng.choice([1, 1, 2])):
        _edit_entry(rng, header, len(data))
    return "edit", _pack(json.dumps(header).encode(), data)


def _check_file(folder, original: dict[str, torch.Tensor], offsets: dict[str, list[int]]) -> bool:
    """True for a clean load (checked bit for bit), False for one EmoSliceError; anything else fails.
    offsets: the original header's data_offsets by name."""
    try:
        idx = SafetensorsIndex(folder)
        loaded = {n: idx.get(n) for n in idx.names()}
    except EmoSliceError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return False
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the library must accept it too
        lib = {n: f.get_tensor(n) for n in f.keys()}
    assert set(loaded) == set(lib)
    blob = (folder / "model.safetensors").read_bytes()
    header, data = _split(blob)
    for n, t in loaded.items():
        assert t.dtype == lib[n].dtype and t.shape == lib[n].shape and _raw(t) == _raw(lib[n]), n
        a, b = header[n]["data_offsets"]
        assert _raw(t) == data[a:b], n  # exactly the bytes the entry claims: never header bytes or a neighbour's
        o = original.get(n)
        if o is not None and offsets[n] == [a, b] and o.dtype == t.dtype:  # same place, same type: same values
            assert _raw(t) == _raw(o), n
    return True


def test_fuzz_safetensors_header(tmp_path):
    original = _original()
    blob = save(original, metadata={"format": "pt"})
    offsets = {k: v["data_offsets"] for k, v in _split(blob)[0].items() if k != "__metadata__"}
    rng = random.Random(SEED)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(blob)
    assert _check_file(folder, original, offsets)  # the unmutated file loads, bit for bit
    clean, t0 = 0, time.perf_counter()
    for i in range(N_HEADER):
        label, mutated = _mutate_file(rng, blob)
        _rewrite(folder / "model.safetensors", mutated)
        try:
            clean += _check_file(folder, original, offsets)
        except AssertionError as e:
            raise AssertionError(f"mutation {i} ({label}): {e}") from None
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutation {i} ({label}) raised {type(e).__name__}: {e}")
    print(
        f"header fuzz: {N_HEADER} mutations, {clean} clean loads, {N_HEADER - clean} refused, "
        f"{time.perf_counter() - t0:.2f} s"
    )
    assert N_HEADER * 0.05 < clean < N_HEADER * 0.5  # both outcomes exercised


# ---- mutations of an index ------------------------------------------------------------------------------

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")


def _sharded(tmp_path) -> tuple:
    original = _original()
    folder = tmp_path / "repo" / "m"
    (folder / "sub").mkdir(parents=True)
    names = list(original)
    parts = {SHARDS[0]: names[:4], SHARDS[1]: names[4:]}
    for shard, keys in parts.items():
        save_file({k: original[k] for k in keys}, str(folder / shard))
    save_file({"a.f32": torch.full((3, 4), 7.0)}, str(tmp_path / "repo" / "outside.safetensors"))
    save_file({"a.f32": torch.full((3, 4), 8.0)}, str(folder / "sub" / "x.safetensors"))
    (folder / "config.json").write_text("{}")
    index = {"metadata": {"total_size": 1}, "weight_map": {k: s for s, keys in parts.items() for k in keys}}
    return original, folder, index


def _mutate_index(rng: random.Random, index: dict, folder) -> bytes:
    wm = index["weight_map"]
    kind = rng.randrange(8)
    if kind == 0:
        index["weight_map"] = rng.choice([list(wm), list(wm.values()), "x", 1, None, [[k, v] for k, v in wm.items()]])
    elif kind == 1:
        del index["weight_map"]
    elif kind in (2, 3):
        wm[rng.choice(list(wm))] = rng.choice(
            [
                None,
                1,
                [],
                {},
                True,
                ".",
                "..",
                "",
                "../outside.safetensors",
                str(folder.parent / "outside.safetensors"),
                "sub/x.safetensors",
                "sub\\x.safetensors",
                "config.json",
                "none.safetensors",
                "a\0.safetensors",
                "./" + SHARDS[0],
                SHARDS[0],
                SHARDS[1],
                "/" + SHARDS[0],
                "~/" + SHARDS[0],
            ]
        )
    elif kind == 4:
        if rng.random() < 0.5:
            del wm[rng.choice(list(wm))]  # harmless: that tensor is simply not listed
        else:
            wm[rng.choice(["zz", "a.f32.x", ""])] = rng.choice(SHARDS)  # listed, but in no shard
    elif kind == 5:
        index[rng.choice(["metadata", "extra"])] = rng.choice(ODD_VALUES)  # other keys: harmless
    elif kind == 6:
        return rng.choice(
            [
                b"[]",
                b"null",
                b"",
                b"{",
                b"\xff{}",
                b'{"weight_map": {"a.f32": NaN}}',
                b'{"weight_map": {}, "weight_map": {}}',
                b"[" * 3000,
            ]
        )
    text = bytearray(json.dumps(index).encode())
    if kind == 7:
        if rng.random() < 0.5:
            for _ in range(rng.choice([1, 2, 3])):
                text[rng.randrange(len(text))] ^= rng.randrange(1, 256)
        else:
            text = text[: rng.randrange(len(text))]
    return bytes(text)


def _check_index(folder, original) -> bool:
    try:
        idx = SafetensorsIndex(folder)
        loaded = {n: idx.get(n) for n in idx.names()}
    except EmoSliceError as e:
        assert str(e) and "\n" not in str(e), repr(str(e))
        return False
    real = folder.resolve()
    for n, t in loaded.items():
        assert idx.info(n).file.resolve().parent == real, idx.info(n).file  # nothing read outside the folder
        assert n in original and t.dtype == original[n].dtype and _raw(t) == _raw(original[n]), n
    return True


def test_fuzz_index(tmp_path):
    original, folder, index = _sharded(tmp_path)
    rng = random.Random(SEED + 1)
    (folder / INDEX_NAME).write_text(json.dumps(index))
    assert _check_index(folder, original) and len(SafetensorsIndex(folder).names()) == len(original)
    clean = 0
    for i in range(N_INDEX):
        mutated = _mutate_index(rng, json.loads(json.dumps(index)), folder)
        _rewrite(folder / INDEX_NAME, mutated)
        try:
            clean += _check_index(folder, original)
        except AssertionError as e:
            raise AssertionError(f"index mutation {i} {mutated[:200]!r}: {e}") from None
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"index mutation {i} {mutated[:200]!r} raised {type(e).__name__}: {e}")
    print(f"index fuzz: {N_INDEX} mutations, {clean} clean loads, {N_INDEX - clean} refused")
    assert N_INDEX * 0.05 < clean < N_INDEX * 0.6


# ---- the JSON reader (emo_slice.safejson) -----------------------------------------------------------------

N_JSON = 3000
JSON_SEEDS = [
    {"model_type": "emo", "hidden_size": 64, "rope_theta": 10000.0, "eos_token_id": [0, 1], "auto_map": None},
    {"format": "emo-slice-profile", "layers": [{"layer": 0, "scores": {"mean-prob": [0.25, 0.5, 1e-3]}}]},
    {"model": {"type": "BPE", "vocab": {"a": 0, "\u0120b": 1, '"[{': 2, "\\": 3}, "merges": [["a", "b"]]}},
]
PIECES = [
    "[" * 129,
    "]" * 129,
    "[" * 5000,
    "9" * 41,
    "-" + "9" * 41,
    "9" * 40,
    "1e999",
    "-1e999",
    "1e-999",
    "NaN",
    "Infinity",
    '"\\ud800"',
    '"\\udc00"',
    '"\\ud83d\\ude00"',
    '"\\\\"',
    '"\\""',
    '"[[["',
    "\ufeff",
    "\x00",
    '"a": 1, "a": 2',
    "{",
    "}",
    ",",
    ":",
    '"',
    "\\",
    "true",
    "null",
]


def _reference(text: str):
    """What an independent reading says: ('ok', value) when json accepts it within every limit, else 'refuse'."""
    from emo_slice.safejson import MAX_DEPTH, MAX_INT_DIGITS

    dups = []

    def pairs(kv):
        if len({k for k, _ in kv}) != len(kv):
            dups.append(kv)
        return dict(kv)

    try:
        value = json.loads(text.removeprefix("\ufeff"), object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return "refuse"
    if dups:
        return "refuse"
    stack = [(value, 0)]
    while stack:
        x, depth = stack.pop()
        if isinstance(x, (list, dict)):
            if depth + 1 > MAX_DEPTH:
                return "refuse"
            children = list(x.values()) + list(x.keys()) if isinstance(x, dict) else x
            stack.extend((c, depth + 1) for c in children)
        elif isinstance(x, bool) or x is None:
            continue
        elif isinstance(x, int) and len(str(abs(x))) > MAX_INT_DIGITS:
            return "refuse"
        elif isinstance(x, float) and not math.isfinite(x):
            return "refuse"
        elif isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return "refuse"
    return ("ok", value)


def _mutate_json(rng: random.Random, text: str) -> str:
    if not text:
        return rng.choice(PIECES)
    kind = rng.randrange(5)
    if kind == 0:  # insert a piece
        i = rng.randrange(len(text) + 1)
        return text[:i] + rng.choice(PIECES) + text[i:]
    if kind == 1:  # replace a value-looking token
        i = rng.randrange(len(text))
        j = min(len(text), i + rng.randrange(1, 8))
        return text[:i] + rng.choice(PIECES) + text[j:]
    if kind == 2:
        return text[: rng.randrange(len(text))]
    if kind == 3:  # wrap in nesting
        n = rng.choice([1, 64, 127, 128, 129, 1000, 100_000])
        return "[" * n + text + "]" * n
    b = bytearray(text.encode("utf-8", errors="surrogateescape"))
    for _ in range(rng.choice([1, 2, 3])):
        b[rng.randrange(len(b))] = rng.choice(b'[]{}",:\\0123456789eE-+. \n\xff\x80ab')
    return b.decode("utf-8", errors="surrogateescape")


def _same(a, b) -> bool:
    """Equal, NaN aside (never accepted here), floats compared exactly."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_fuzz_json_reader(tmp_path):
    from emo_slice.errors import DataError
    from emo_slice.safejson import BadJSON, parse_json, read_json

    rng = random.Random(SEED + 2)
    accepted = 0
    path = tmp_path / "f.json"
    for i in range(N_JSON):
        text = rng.choice([json.dumps(s) for s in JSON_SEEDS] + [json.dumps(s, indent=1) for s in JSON_SEEDS])
        for _ in range(rng.choice([1, 1, 2, 3])):
            text = _mutate_json(rng, text)
        raw = text.encode("utf-8", errors="surrogateescape")
        ref = _reference(text) if raw.decode("utf-8", errors="replace") == text else "refuse"
        try:
            got = ("ok", parse_json(raw))
        except BadJSON as e:
            assert str(e) and "\n" not in str(e), (i, str(e))
            got = "refuse"
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"json mutation {i} {raw[:120]!r} raised {type(e).__name__}: {e}")
        assert (got == "refuse") == (ref == "refuse"), (i, raw[:200], ref if ref == "refuse" else "ok", got)
        if got != "refuse":
            accepted += 1
            assert _same(got[1], ref[1]), (i, raw[:200])
        if i % 10 == 0:  # the same through a file: one DataError line naming it, or the same value
            _rewrite(path, raw)
            try:
                assert _same(read_json(path), got[1]) and got != "refuse"
            except DataError as e:
                assert got == "refuse" and str(e).startswith(f"{path}: ") and "\n" not in str(e)
            _check_jsonl_line(path, raw.replace(b"\n", b" ").replace(b"\r", b" "))
    print(f"json fuzz: {N_JSON} mutations, {accepted} accepted")
    assert N_JSON * 0.05 < accepted < N_JSON * 0.8


def _check_jsonl_line(path, line: bytes) -> None:
    """As line 2 of a JSONL file: the value json gives within the limits, or one DataError naming path:2."""
    from emo_slice.errors import DataError
    from emo_slice.safejson import read_jsonl

    text = line.decode("utf-8", errors="surrogateescape")
    ref = _reference(text) if line.decode("utf-8", errors="replace") == text else "refuse"
    _rewrite(path, b'{"a": 1}\n' + line + b"\n")
    try:
        rows = list(read_jsonl(path, expect=None))
    except DataError as e:
        assert ref == "refuse" and str(e).startswith(f"{path}:2") and "\n" not in str(e), (line[:200], str(e))
        return
    if not line.strip():
        assert len(rows) == 1
    else:
        assert ref != "refuse" and _same(rows[1][1], ref[1]), line[:200]


def _random_value(rng: random.Random, depth: int):
    if depth <= 0 or rng.random() < 0.3:
        return rng.choice([0, -7, 2**63, 1.5, True, None, "", "a]b", '"[{', "\\", "\u00e9", 'x\\"]'])
    if rng.random() < 0.5:
        return [_random_value(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {
        rng.choice(["a", "[", "{", '"', "\\"]) + str(k): _random_value(rng, depth - 1) for k in range(rng.randrange(4))
    }


def _depth(value) -> int:
    stack, deepest = [(value, 0)], 0
    while stack:
        x, d = stack.pop()
        if isinstance(x, (list, dict)):
            deepest = max(deepest, d + 1)
            stack.extend((c, d + 1) for c in (x.values() if isinstance(x, dict) else x))
    return deepest


def test_fuzz_json_bracket_scan_equals_the_parsed_depth():
    """nesting_depth (brackets outside strings, in Python for short texts and numpy for long ones) against the
    depth of the value json parses, on random values whose strings hold brackets, quotes and backslashes."""
    from emo_slice import safejson

    rng = random.Random(SEED + 3)
    for i in range(1500):
        value = _random_value(rng, rng.randrange(1, 12))
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        if i % 5 == 0:  # long enough for the numpy path
            text = json.dumps([value] * 600).encode()
        expected = _depth(json.loads(text))
        assert safejson.nesting_depth(text) == expected, text[:200]
