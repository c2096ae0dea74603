"""artifacts: atomic writes leave no temporary behind, output guards refuse what would damage an input."""

import errno
import json
import os
import subprocess
import sys

import pytest

from emo_slice import artifacts
from emo_slice.artifacts import (
    MARKER,
    atomic_output_dir,
    atomic_output_file,
    atomic_write_text,
    check_output,
    made_by_emo_slice,
    output_lock,
)
from emo_slice.errors import EmoSliceError, UsageError


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
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(artifacts.os, "replace", boom)
    with pytest.raises(EmoSliceError, match=f"cannot write {out} .*disk is full"):
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
    with atomic_output_dir(old) as tmp:
        (tmp / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="--overwrite"):
        with atomic_output_dir(old):
            pass
    with pytest.raises(RuntimeError):
        with atomic_output_dir(old, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert (
        sorted(p.name for p in old.iterdir()) == [MARKER, "keep.txt"] and (old / "keep.txt").read_text() == "precious"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_atomic_output_dir_overwrite_replaces_after_success(tmp_path):
    old = tmp_path / "full"
    with atomic_output_dir(old) as tmp:
        (tmp / "keep.txt").write_text("old")
    assert made_by_emo_slice(old)
    with atomic_output_dir(old, overwrite=True) as tmp:
        assert (old / "keep.txt").exists()  # the old output stays until the new one is complete
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in old.iterdir()) == [MARKER, "new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_overwrite_never_replaces_a_folder_emo_slice_did_not_make(tmp_path):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "thesis.tex").write_text("years of work")
    with pytest.raises(UsageError, match="did not write"):
        check_output(user, folder=True, overwrite=True)
    with pytest.raises(UsageError, match="did not write"):
        with atomic_output_dir(user, overwrite=True) as tmp:
            (tmp / "x").write_text("x")
    assert [p.name for p in user.iterdir()] == ["thesis.tex"] and [p.name for p in tmp_path.iterdir()] == ["thesis"]
    (user / "thesis.tex").unlink()  # an empty folder (or one holding only the marker) is free to use
    assert check_output(user, folder=True) == user


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
    f.write_text('{"format": "emo-slice-sweep"}')
    with pytest.raises(UsageError, match="already exists.*--overwrite"):
        check_output(f, kind="sweep")
    assert check_output(f, overwrite=True, kind="sweep") == f
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="not empty.*--overwrite"):
        check_output(full, folder=True)
    with pytest.raises(UsageError, match="did not write"):
        check_output(full, folder=True, overwrite=True)
    (full / MARKER).write_text("{}")  # a marker emo-slice did not write
    with pytest.raises(UsageError, match="did not write"):
        check_output(full, folder=True, overwrite=True)
    (full / MARKER).write_text(json.dumps({"created_by": "emo-slice", "files": ["keep.txt"]}))
    assert check_output(full, folder=True, overwrite=True) == full
    (full / "thesis.tex").write_text("mine")  # put in later: the folder is no longer only what emo-slice wrote
    with pytest.raises(UsageError, match="holds 'thesis.tex', which emo-slice did not write"):
        check_output(full, folder=True, overwrite=True)
    (full / MARKER).write_text(json.dumps({"created_by": "emo-slice pretrain", "checkpoints": []}))
    with pytest.raises(UsageError, match="lists no files"):  # a run folder is replaced by pretrain alone
        check_output(full, folder=True, overwrite=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, folder=True) == empty
    with pytest.raises(UsageError, match="is a folder; give a file name"):
        check_output(empty, overwrite=True)
    with pytest.raises(UsageError, match="is a file; give a folder path"):
        check_output(f, folder=True, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "empty", "full"]  # nothing written


def test_check_output_file_overwrite_rules(tmp_path):
    """--overwrite replaces a regular file whose contents say emo-slice wrote that kind of output, never a model's
    file or a FIFO."""
    tex = tmp_path / "thesis.tex"
    tex.write_text("x")
    with pytest.raises(UsageError, match="not a .json file"):
        check_output(tex, overwrite=True, suffixes=(".json",))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="file of the model folder"):
        check_output(model / "config.json", overwrite=True, suffixes=(".json",))
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        check_output(fifo, overwrite=True, suffixes=(".json",))
    ok = tmp_path / "results.json"
    ok.write_text("old")  # named like results, but its contents do not say emo-slice wrote it
    with pytest.raises(UsageError, match="not an emo-slice results file"):
        check_output(ok, overwrite=True, kind="results")
    ok.write_text('{"format": "emo-slice-results", "results": {}}')
    assert check_output(ok, overwrite=True, kind="results") == ok
    with pytest.raises(UsageError, match="not an emo-slice profile"):  # another artifact of emo-slice's
        check_output(ok, overwrite=True, kind="profile")
    with pytest.raises(UsageError, match="not a file emo-slice wrote"):  # no kind: never replaced
        check_output(ok, overwrite=True)


def test_check_output_refuses_an_unwritable_folder_before_work(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_output(blocker / "sub" / "out.json")
    with pytest.raises(UsageError, match="is a file, not a folder"):
        check_output(blocker / "slice", folder=True)
    monkeypatch.setattr(artifacts.os, "access", lambda path, mode: False)  # what a 0o555 folder gives a non-root user
    with pytest.raises(UsageError, match="cannot write in .*permission denied"):
        check_output(tmp_path / "new" / "out.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_write_errors_become_one_line_and_leave_nothing(tmp_path):
    out = tmp_path / "slice"
    with pytest.raises(EmoSliceError, match=f"cannot write {out} .*disk is full"):
        with atomic_output_dir(out) as tmp:
            (tmp / "a.bin").write_bytes(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a write() on a full disk names no file
    assert list(tmp_path.iterdir()) == []
    # an error reading a source file is not a write error: it stays an OSError naming that file
    with pytest.raises(PermissionError):
        with atomic_output_dir(out):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path.parent / "source.bin"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EmoSliceError, match="cannot write"):  # parent folder that is a file
        (tmp_path / "f").write_text("x")
        atomic_write_text(tmp_path / "f" / "a.json", "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_lock_is_reentrant_released_and_removes_only_dead_temporaries(tmp_path):
    out = tmp_path / "deep" / "slice"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, alive_pid = int(dead.stdout), os.getppid()
    with output_lock(out):
        pass
    assert not (tmp_path / "deep").exists()  # the folder made for the lock is gone again: nothing written
    (tmp_path / "deep").mkdir()
    for name in (f".slice.tmp-{dead_pid}", f".slice.old-{dead_pid}", f".slice.tmp-{alive_pid}"):
        (tmp_path / "deep" / name).mkdir()
    (tmp_path / "deep" / f".slice.tmp-{dead_pid}" / "half.bin").write_bytes(b"x")
    (tmp_path / "deep" / ".slice.lock").write_text(f"{dead_pid}\n")  # what kill -9 leaves: a lock nobody holds
    with output_lock(out) as held:
        assert held == out and (tmp_path / "deep" / ".slice.lock").read_text().strip() == str(os.getpid())
        with output_lock(out):  # re-entrant: extract inside make_slice
            pass
        with atomic_output_dir(out) as tmp:
            (tmp / "w").write_text("w")
    names = sorted(p.name for p in (tmp_path / "deep").iterdir())
    assert names == [f".slice.tmp-{alive_pid}", "slice"]  # stale ones and the lock file removed; a live one kept


def test_parse_size():
    assert artifacts.parse_size("5GB") == 5 * 10**9
    assert artifacts.parse_size("2GiB") == 2 * 1024**3
    assert artifacts.parse_size("100KB") == 100_000 and artifacts.parse_size(123) == 123
    with pytest.raises(UsageError, match="not a size"):
        artifacts.parse_size("lots")


def test_provenance_records_versions():
    p = artifacts.provenance(kind="test")
    assert p["kind"] == "test" and p["emo_slice_version"] and p["python_version"] and "T" in p["date"]
