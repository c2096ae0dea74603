"""artifacts: atomic writes leave no temporary behind, output guards refuse what would damage an input."""

import pytest

from emo_slice import artifacts
from emo_slice.artifacts import atomic_output_dir, atomic_output_file, atomic_write_text, check_output
from emo_slice.errors import UsageError


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    out = tmp_path / "sub" / "a.json"
    assert atomic_write_text(out, "one") == out
    atomic_write_text(out, "two")
    assert out.read_text() == "two"
    assert [p.name for p in out.parent.iterdir()] == ["a.json"]


def test_atomic_write_text_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "a.json"
    out.write_text("old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(out, "new")
    assert out.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_output_file_removes_temp_on_error(tmp_path):
    out = tmp_path / "plot.png"
    with pytest.raises(RuntimeError):
        with atomic_output_file(out) as tmp:
            assert tmp.parent == tmp_path and tmp.name != out.name
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_output_file(out) as tmp:
        tmp.write_bytes(b"whole")
    assert out.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_atomic_output_dir_error_removes_temp_and_keeps_old(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "full"
    old.mkdir()
    (old / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="--overwrite"):
        with atomic_output_dir(old):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(old, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert [p.name for p in old.iterdir()] == ["keep.txt"] and (old / "keep.txt").read_text() == "precious"
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_atomic_output_dir_overwrite_replaces_after_success(tmp_path):
    old = tmp_path / "full"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    with atomic_output_dir(old, overwrite=True) as tmp:
        assert (old / "keep.txt").exists()  # the old output stays until the new one is complete
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in old.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_check_output_refuses_paths_inside_or_around_inputs(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    with pytest.raises(UsageError, match="inside the input"):
        check_output(src / "sub", inputs=[src], folder=True)
    with pytest.raises(UsageError, match="is the input"):
        check_output(src, inputs=[src], folder=True, overwrite=True)
    with pytest.raises(UsageError, match="contains the input"):
        check_output(tmp_path, inputs=[src], folder=True, overwrite=True)
    with pytest.raises(UsageError, match="^--slice "):
        check_output(src / "x.json", inputs=[src], flag="--slice")
    assert check_output(tmp_path / "elsewhere", inputs=[src], folder=True) == (tmp_path / "elsewhere").absolute()


def test_check_output_existing_outputs(tmp_path):
    f = tmp_path / "a.json"
    f.write_text("x")
    with pytest.raises(UsageError, match="already exists.*--overwrite"):
        check_output(f)
    assert check_output(f, overwrite=True) == f
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty.*--overwrite"):
        check_output(full, folder=True)
    assert check_output(full, folder=True, overwrite=True) == full
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, folder=True) == empty
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        check_output(empty, overwrite=True)
    with pytest.raises(UsageError, match="is a file; give a folder path"):
        check_output(f, folder=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "empty", "full"]  # nothing written


def test_parse_size():
    assert artifacts.parse_size("5GB") == 5 * 10**9
    assert artifacts.parse_size("2GiB") == 2 * 1024**3
    assert artifacts.parse_size("100KB") == 100_000 and artifacts.parse_size(123) == 123
    with pytest.raises(UsageError, match="not a size"):
        artifacts.parse_size("lots")


def test_provenance_records_versions():
    p = artifacts.provenance(kind="test")
    assert p["kind"] == "test" and p["emo_slice_version"] and p["python_version"] and "T" in p["date"]
