"""Which existing files emo-slice wrote, told by their contents, never by their name or suffix.

`--overwrite` replaces a file only when `wrote(path, kind)` says emo-slice made it (`package.json`,
`holiday.png`, `model.gguf` from elsewhere are never replaced, whatever they are called):

- JSON artifacts (results, profile, sweep, stability): a JSON object whose `format` names the artifact
  (`emo-slice-results`, `emo-slice-profile`, `emo-slice-sweep`, `emo-slice-stability`), read with the bounded
  reader;
- predictions (JSONL): the first record's `format` is `emo-slice-predictions` (every record carries it);
- PNG pictures: a tEXt chunk `Software: emo-slice ...` before the image data (PNG's own metadata field);
- GGUF files: the `emo_slice.export` key among the first key-values of the header (written right after
  `general.architecture`).

Each check reads at most the header or the JSON file (bounded), only from a regular file, and answers False
for anything it cannot read. No torch import.
"""

from __future__ import annotations

import struct
from pathlib import Path

from emo_slice.errors import EmoSliceError
from emo_slice.safejson import open_regular, read_json, read_jsonl

FORMATS = {
    "results": "emo-slice-results",
    "profile": "emo-slice-profile",
    "sweep": "emo-slice-sweep",
    "stability": "emo-slice-stability",
    "predictions": "emo-slice-predictions",
}
KINDS = (*FORMATS, "png", "gguf")
DESCRIBE = {
    "results": "an emo-slice results file",
    "profile": "an emo-slice profile",
    "sweep": "an emo-slice sweep results file",
    "stability": "an emo-slice stability report",
    "predictions": "an emo-slice predictions file",
    "png": "a picture emo-slice drew",
    "gguf": "a GGUF file emo-slice exported",
}
PNG_SOFTWARE = "emo-slice"  # the start of the tEXt `Software` value emo-slice's pictures carry
GGUF_KEY = "emo_slice.export"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def wrote(path: str | Path, kind: str) -> bool:
    """True when the regular file at path holds an artifact of this kind that emo-slice wrote (see above)."""
    check = {"png": _png, "gguf": _gguf, "predictions": _predictions}.get(kind, _json)
    try:
        return check(Path(path), kind)
    except (EmoSliceError, OSError, ValueError, struct.error):
        return False


def _json(path: Path, kind: str) -> bool:
    d = read_json(path, allow_nan=True)
    return isinstance(d, dict) and d.get("format") == FORMATS[kind]


def _predictions(path: Path, kind: str) -> bool:
    for _, rec in read_jsonl(path, allow_nan=True):
        return rec.get("format") == FORMATS[kind]
    return False


def _png(path: Path, kind: str) -> bool:
    """A tEXt chunk `Software` starting with `emo-slice` before IDAT (chunks walked by their lengths)."""
    with open_regular(path) as f:
        if f.read(8) != _PNG_SIGNATURE:
            return False
        for _ in range(64):
            head = f.read(8)
            if len(head) < 8:
                return False
            length, ctype = struct.unpack(">I4s", head)
            if ctype in (b"IDAT", b"IEND") or length > 1 << 20:
                return False
            data = f.read(length)
            f.read(4)  # CRC
            if ctype == b"tEXt":
                key, _, text = data.partition(b"\0")
                if key == b"Software" and text.decode("latin-1").startswith(PNG_SOFTWARE):
                    return True
    return False


_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def _gguf(path: Path, kind: str) -> bool:
    """The key GGUF_KEY among the first 16 key-values of a GGUF (v2/v3, little-endian) header."""
    with open_regular(path) as f:
        magic, version, _, n_kv = struct.unpack("<4sIQQ", f.read(24))
        if magic != b"GGUF" or version not in (2, 3):
            return False
        for _ in range(min(n_kv, 16)):
            key = _gguf_string(f)
            (vtype,) = struct.unpack("<I", f.read(4))
            if key == GGUF_KEY:
                return vtype == 8
            if not _gguf_skip(f, vtype):
                return False
    return False


def _gguf_string(f, limit: int = 1 << 16) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    if n > limit:
        raise ValueError("string too long for a GGUF key")
    return f.read(n).decode("utf-8")


def _gguf_skip(f, vtype: int) -> bool:
    """Move past one value; False for what is not worth walking here (arrays of strings or arrays)."""
    if vtype in _GGUF_SCALAR:
        f.seek(_GGUF_SCALAR[vtype], 1)
    elif vtype == 8:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(n, 1)
    elif vtype == 9:
        etype, count = struct.unpack("<IQ", f.read(12))
        if etype not in _GGUF_SCALAR:
            return False
        f.seek(_GGUF_SCALAR[etype] * count, 1)
    else:
        return False
    return True
