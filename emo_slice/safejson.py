"""The one reader of JSON and JSONL that came from anywhere: bounded, strict, one line on failure.

Every JSON file emo-slice reads (config.json, tokenizer.json, profiles, prompts, tasks, run folders'
train_config.json / log.jsonl / DCP metadata, results, slice.json, markers) goes through `read_json` or
`read_jsonl`; bytes already in memory (a safetensors header, a manifest in metadata) through `parse_json`.
The limits, checked before Python's `json` builds anything:

- file size: `max_bytes` (default MAX_FILE_BYTES, safetensors' own limit for its JSON header); a JSONL
  line: `max_line_bytes`. The file is stat-ed before it is opened: only a regular file is read (a FIFO
  or a device never blocks the reader), opened non-blocking.
- depth: at most MAX_DEPTH nested arrays/objects (serde_json's recursion limit, which the tokenizers
  and safetensors libraries read these files with), counted by a scan of the brackets outside strings,
  so a file nested 100,000 deep is refused without recursing.
- numbers: integers of at most MAX_INT_DIGITS digits (Python parses a 5,000-digit integer into a
  ValueError, a 4,000-digit one slowly), floats finite (`1e999` is not read as inf), no NaN/Infinity
  unless `allow_nan` (logs and results emo-slice wrote itself may record a diverged loss).
- text: UTF-8 (a leading BOM is skipped), no duplicate keys, no lone surrogate (`"\\ud800"`: not text,
  and no UTF-8 writer can write it back).

A failure is an EmoSliceError (the class the caller names) of one line: `PATH: what is wrong; hint`
(`PATH:LINE: ...` for JSONL). No torch import.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Iterator

from emo_slice.errors import DataError, EmoSliceError

MAX_DEPTH = 128
MAX_INT_DIGITS = 40
MAX_FILE_BYTES = 100_000_000
MAX_LINE_BYTES = 16_000_000

_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b'"[]{}')
_SMALL = 4096  # marks counted in Python below this; numpy above
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class BadJSON(ValueError):
    """What is wrong with a JSON text (a short phrase, without the file's name)."""


def short(value, limit: int = 60) -> str:
    """repr of a value from a file, cut to one short line (a hostile file may hold anything)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# Parsing bytes
# ---------------------------------------------------------------------------------------------


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays/objects in a JSON text, brackets inside strings not counted, without recursion.

    Escaped backslashes and quotes are dropped first (in valid JSON a backslash is only inside a string, and
    escapes pair from the left), so every quote left opens or closes a string; a bracket is outside strings
    when an even number of quotes precede it."""
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = raw.translate(None, _NOT_STRUCTURAL)  # quotes and brackets only
    if len(marks) <= _SMALL:
        depth = deepest = 0
        inside = False
        for c in marks:
            if c == 34:
                inside = not inside
            elif not inside:
                depth += 1 if c in (91, 123) else -1
                deepest = max(deepest, depth)
        return deepest
    import numpy as np  # here, not at the top: the CLI's import stays light

    a = np.frombuffer(marks, np.uint8)
    outside = (np.cumsum(a == 34, dtype=np.int64) & 1) == 0
    step = np.zeros(len(a), np.int8)
    step[((a == 91) | (a == 123)) & outside] = 1
    step[((a == 93) | (a == 125)) & outside] = -1
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def _int(text: str) -> int:
    digits = len(text) - (text[0] == "-")
    if digits > MAX_INT_DIGITS:
        raise BadJSON(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise BadJSON(f"the number {short(text, 30)} is out of range")
    return x


def _no_constant(name: str):
    raise BadJSON(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise BadJSON(f"key {short(dup)} appears twice")
    return d


def _lone_surrogate(obj) -> str | None:
    """The first string (key or value) holding a lone surrogate, walked without recursion."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return x
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def parse_json(raw: bytes | str, *, allow_nan: bool = False, max_depth: int = MAX_DEPTH) -> object:
    """A JSON text parsed within the limits above; raises BadJSON (a ValueError) saying what is wrong."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise BadJSON("not UTF-8 text") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadJSON(f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    depth = nesting_depth(raw)
    if depth > max_depth:
        raise BadJSON(f"nested {depth} levels deep (at most {max_depth})")
    try:
        obj = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_int=_int,
            parse_float=_float,
            parse_constant=float if allow_nan else _no_constant,
        )
    except json.JSONDecodeError as e:
        msg = e.msg.removesuffix(" starting at").removesuffix(" at")
        raise BadJSON(f"invalid JSON ({msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:  # pragma: no cover - the depth was checked above
        raise BadJSON("nested too deeply") from None
    except ValueError as e:  # BadJSON from a hook, or int()'s own limit
        raise BadJSON(str(e).splitlines()[0][:120]) from None
    if _SURROGATE_ESCAPE.search(raw):
        bad = _lone_surrogate(obj)
        if bad is not None:
            raise BadJSON(f"the string {short(bad)} holds a lone surrogate, which is not text")
    return obj


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def _fail(error: type[EmoSliceError], where: str, why: str, hint: str) -> EmoSliceError:
    return error(f"{where}: {why}" + (f"; {hint}" if hint else ""))


def open_regular(path: Path, *, error: type[EmoSliceError] = DataError, hint: str = ""):
    """A binary file object of path, which must be a regular file: checked with stat before opening and opened
    non-blocking (a FIFO, socket or device never blocks); following links is the caller's rule (io/safefiles)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(error, str(path), "no such file", hint) from None
    except OSError as e:
        raise _fail(error, str(path), f"cannot read it ({e.strerror})", hint or "check its permissions") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise _fail(error, str(path), f"is {kind}", hint or "give a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise _fail(error, str(path), f"cannot read it ({e.strerror})", hint or "check its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced between stat and open
        os.close(fd)
        raise _fail(error, str(path), "is not a regular file", hint or "give a regular file")
    return os.fdopen(fd, "rb")


def read_limited(path: Path, max_bytes: int, *, error: type[EmoSliceError] = DataError, hint: str = "") -> bytes:
    """The bytes of a regular file (see open_regular) of at most max_bytes."""
    with open_regular(path, error=error, hint=hint) as f:
        try:
            raw = f.read(max_bytes + 1)
        except OSError as e:
            raise _fail(error, str(path), f"cannot read it ({e.strerror})", hint) from None
    if len(raw) > max_bytes:
        raise _fail(error, str(path), f"is larger than {max_bytes:,} bytes, more than such a file holds", hint)
    return raw


def read_json(
    path: str | os.PathLike,
    *,
    error: type[EmoSliceError] = DataError,
    hint: str = "",
    max_bytes: int = MAX_FILE_BYTES,
    allow_nan: bool = False,
    expect: type | None = None,
    label: str | None = None,
) -> object:
    """The JSON value of a file, within the limits (module docstring); expect: the type the top level must
    have (dict, list); label: how the file is named in a message (default its path)."""
    path = Path(path)
    where = label or str(path)
    raw = read_limited(path, max_bytes, error=error, hint=hint)
    try:
        obj = parse_json(raw, allow_nan=allow_nan)
    except BadJSON as e:
        raise _fail(error, where, str(e), hint) from None
    if expect is not None and not isinstance(obj, expect):
        kind = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise _fail(error, where, f"holds {type(obj).__name__}, not {kind}", hint)
    return obj


def read_jsonl(
    path: str | os.PathLike,
    *,
    error: type[EmoSliceError] = DataError,
    hint: str = "fix or remove that line",
    max_line_bytes: int = MAX_LINE_BYTES,
    allow_nan: bool = False,
    expect: type | None = dict,
    partial_last: bool = False,
    label: str | None = None,
) -> Iterator[tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSONL file, streamed (no limit on the file's size;
    a line ends at \\n, \\r\\n or \\r); expect: the type every line must hold (default dict); partial_last: a
    last line without its newline that does not parse is skipped (a record whose writer was killed mid-append,
    as in a run's log)."""
    path = Path(path)
    where = label or str(path)
    with open_regular(path, error=error, hint=hint) as f:
        n = 0
        while True:
            try:
                line = f.readline(max_line_bytes + 1)
            except OSError as e:
                raise _fail(error, str(path), f"cannot read it ({e.strerror})", hint) from None
            if not line:
                return
            n += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                raise _fail(error, f"{where}:{n}", f"the line is longer than {max_line_bytes:,} bytes", hint)
            if n == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            last = not line.endswith(b"\n")  # readline stops short of a newline only at the end of the file
            for part in line.rstrip(b"\n").split(b"\r"):
                if part.strip():
                    obj = _line_value(part, f"{where}:{n}", error, hint, allow_nan, expect, partial_last and last)
                    if obj is _SKIP:
                        return
                    yield n, obj


_SKIP = object()


def _line_value(line: bytes, where: str, error, hint: str, allow_nan: bool, expect, may_skip: bool):
    """One JSONL line parsed (or _SKIP for a cut-short last line when may_skip)."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as e:
        if may_skip:
            return _SKIP
        raise error(
            f"{where} is not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); re-save the file as UTF-8"
        ) from None
    try:
        obj = parse_json(line, allow_nan=allow_nan)
    except BadJSON as e:
        if may_skip:
            return _SKIP
        raise _fail(error, where, str(e).replace(" at line 1 column", " at column"), hint) from None
    if expect is not None and not isinstance(obj, expect):
        kind = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise _fail(error, where, f"holds {type(obj).__name__}, not {kind} (one per line)", hint)
    return obj
