"""The bounded JSON reader (emo_slice/safejson.py): depth, integer size, numbers, text, file size, JSONL lines.

The fuzz test of the same reader is in tests/io/test_fuzz_checkpoint.py; the commands that read each kind of
file through it, in tests/cli/test_hostile_json.py.
"""

import pytest

from emo_slice.errors import DataError
from emo_slice.safejson import MAX_DEPTH, parse_json, read_json, read_jsonl

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000


def test_reader_limits(tmp_path):
    assert parse_json(b'{"a": [1, 2.5, "x"], "b": {"c": null}}') == {"a": [1, 2.5, "x"], "b": {"c": None}}
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) == eval("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert parse_json('["[[[[", "\\"]]]", "\\\\"]') == ["[[[[", '"]]]', "\\"]  # brackets in strings do not count
    assert parse_json('["\\ud83d\\ude00"]') == ["\U0001f600"]  # a surrogate pair is text
    assert parse_json(b"\xef\xbb\xbf[1]") == [1]
    assert parse_json("[NaN]", allow_nan=True)[0] != parse_json("[NaN]", allow_nan=True)[0]
    for text, needle in [
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested"),
        (DEEP, "nested"),
        ("[" + HUGE + "]", "5000 digits"),
        ("[-" + HUGE + "]", "5000 digits"),
        ("[1e999]", "out of range"),
        ("[NaN]", "NaN"),
        ('{"a": 1, "a": 2}', "twice"),
        ('"\\udc00"', "surrogate"),
        (b"\xff", "UTF-8"),
        ("[1,", "invalid JSON"),
    ]:
        with pytest.raises(ValueError, match=needle):
            parse_json(text)
    p = tmp_path / "x.json"
    p.write_text("[" * 200_000)
    with pytest.raises(DataError, match=f"^{p}: nested"):
        read_json(p)
    p.write_text("[1]")
    with pytest.raises(DataError, match="larger than 2 bytes"):
        read_json(p, max_bytes=2)
    with pytest.raises(DataError, match="holds list, not a JSON object"):
        read_json(p, expect=dict)
    p.write_text('{"a": 1}\n\n{"a": ' + HUGE + "}\n")
    with pytest.raises(DataError, match=f"^{p}:3: an integer of 5000 digits"):
        list(read_jsonl(p))
    p.write_text('{"a": 1}\n{"a": 2')  # a record cut short by a kill: skipped only when asked
    assert list(read_jsonl(p, partial_last=True)) == [(1, {"a": 1})]
    with pytest.raises(DataError, match=":2: invalid JSON"):
        list(read_jsonl(p))
