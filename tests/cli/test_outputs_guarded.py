"""Outputs are guarded.

--overwrite deletes only what emo-slice made, no output inside a model, extract copies an allow-list, a lock
between two writers, OSError as one line, checked before work, kill -9 leftovers removed, Ctrl-C during
pretrain names the checkpoint, a malformed size refused. Each
asserts the exit code, one stderr line without a traceback, and that nothing was written or lost.
"""

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_one_line_error, invoke

from emo_slice import artifacts
from emo_slice.artifacts import MARKER
from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.extract import copied_files

ROOT = os.geteuid() == 0  # chmod does not stop root: those cases are simulated instead
# an extract whose writer waits before finishing: long enough to race or to kill it mid-write
SLOW_EXTRACT = """
import sys, time
import emo_slice.io.writer as w
finish = w.ShardWriter.finish
def slow(self, *a, **k):
    time.sleep(float(sys.argv[1]))
    return finish(self, *a, **k)
w.ShardWriter.finish = slow
from emo_slice.cli import main
main(sys.argv[2:])
"""


def tree_hash(folder: Path) -> str:
    """Names, sizes and bytes of every file under folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporaries and lock files an emo-slice writer would leave in folder."""
    return sorted(
        p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".lock")
    )


def _task(tmp_path: Path) -> Path:
    path = tmp_path / "task.jsonl"
    path.write_text(
        "".join(json.dumps({"context": f"q{i}", "choices": ["a", "b"], "label": i % 2}) + "\n" for i in range(3))
    )
    return path


@pytest.fixture
def no_model_runs(monkeypatch):
    """Fail the test if eval or profile starts computing."""
    import emo_slice.eval.harness as harness
    import emo_slice.slicing.profile as profile

    monkeypatch.setattr(harness, "Runner", lambda *a, **k: pytest.fail("a model ran before the output was checked"))
    monkeypatch.setattr(profile, "profile_model", lambda *a, **k: pytest.fail("profiling ran before the output check"))


# ---- quickstart --overwrite deletes only a folder emo-slice made; --keep checked first --------------------


def test_quickstart_overwrite_never_deletes_user_files(tmp_path):
    from emo_slice.workflows import quickstart

    v = tmp_path / "v"
    v.mkdir()
    (v / "thesis.tex").write_text("years of work")
    before = tree_hash(tmp_path)
    # the exact command: --keep abc is refused before anything runs or is deleted
    assert_one_line_error(invoke("quickstart", "--out", v, "--overwrite", "--size", "tiny", "--keep", "abc"), "--keep")
    assert_one_line_error(
        invoke("quickstart", "--out", v, "--overwrite", "--size", "tiny", "--keep", "99"), "--keep 99"
    )
    # a valid --keep: the folder holds a file the quickstart did not write, so --overwrite refuses
    assert_one_line_error(invoke("quickstart", "--out", v, "--overwrite", "--size", "tiny"), "'thesis.tex'", "refusing")
    # stricter: a folder named like a quickstart's own (data/) but holding the user's files is not deleted either
    (v / "thesis.tex").unlink()
    (v / "data").mkdir()
    (v / "data" / "notes.txt").write_text("mine")
    assert_one_line_error(invoke("quickstart", "--out", v, "--overwrite", "--size", "tiny"), "not made by emo-slice")
    assert (v / "data" / "notes.txt").read_text() == "mine"
    shutil.rmtree(v / "data")
    (v / "thesis.tex").write_text("years of work")
    assert tree_hash(tmp_path) == before and leftovers(tmp_path) == []
    # a folder the quickstart made (its marker) is what --overwrite replaces
    made = tmp_path / "made"
    quickstart.mark_out(made)
    (made / "eval-code.json").write_text("{}")
    assert quickstart.prepare_out(made, overwrite=True) == made and not made.exists()


# ---- eval --out inside or equal to the model is refused before scoring ------------------------------------


def test_eval_out_in_or_at_the_model_is_refused_before_scoring(fixtures, tmp_path, no_model_runs):
    model = tmp_path / "model"
    shutil.copytree(fixtures / "emo-tiny", model)
    other = tmp_path / "other"
    shutil.copytree(fixtures / "emo-tiny", other)
    task, before = _task(tmp_path), tree_hash(tmp_path)
    for out, needle in [
        (model / "config.json", "inside the input"),
        (model, "is the input"),
        (other / "config.json", "file of the model folder"),  # a model that is not an input is not overwritten either
        (other, "is a folder"),
    ]:
        proc = invoke("eval", model, "--task", task, "--out", out, "--overwrite")
        assert_one_line_error(proc, "--out", needle)
    assert tree_hash(tmp_path) == before and leftovers(tmp_path) == [] and leftovers(model) == []


# ---- extract copies an allow-list ---------------------------------------------------------------------------


def test_extract_copies_only_what_a_checkpoint_needs(tiny_ckpt, tmp_path):
    src = random_checkpoint(tmp_path / "src", "tiny", seed=1, max_shard_size="200KB")  # index + 4 shards
    assert (src / "model.safetensors.index.json").exists() and not (src / "model.safetensors").exists()
    shutil.copy(tiny_ckpt / "model.safetensors", src / "model.safetensors")  # an old full model beside the index
    junk = {
        "training_state.pt": b"\x80\x04junk",
        "pytorch_model.bin": b"x" * 5000,
        "extra.gguf": b"GGUF",
        "provenance.json": b'{"created_by": "someone else"}',
        "slice.json": b'{"format": "old"}',
        "train_config.json": b"{}",
        "notes.txt": b"private",
    }
    kept = {
        "README.md": b"# model card",
        "LICENSE": b"Apache-2.0",
        "modeling_emo.py": b"# code",
        "configuration_emo.py": b"# code",
        "special_tokens_map.json": b"{}",
    }
    for name, data in {**junk, **kept}.items():
        (src / name).write_bytes(data)
    before = tree_hash(src)
    out = tmp_path / "slice"
    proc = invoke("extract", src, "--experts", "0,1,5", "--out", out)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in out.iterdir()}
    assert not names & (set(junk) - {"slice.json"}), names & set(junk)  # slice.json: the slice's own, below
    assert set(kept) <= names and all((out / n).read_bytes() == d for n, d in kept.items())
    manifest = json.loads((out / "slice.json").read_text())
    assert manifest["format"] == "emo-slice-slice" and manifest["kept_experts"][0] == [0, 1, 5, 8]
    assert {p.name for p in out.glob("*.safetensors")} == set(manifest["files"]) == {"model.safetensors"}
    # the slice's weights are the slice of the indexed model (seed 1), not the stray full model (seed 0)
    sliced, source, stray = Checkpoint(out), Checkpoint(src), Checkpoint(tiny_ckpt)
    assert sliced.config.num_experts == 4
    name = "model.layers.0.mlp.experts.{}.gate_proj.weight"
    assert sliced.get(name.format(2)).equal(source.get(name.format(5)))
    assert not sliced.get(name.format(2)).equal(stray.get(name.format(5)))
    # size on disk is about the kept weights: no copied weights or training state
    weights = (out / "model.safetensors").stat().st_size
    others = sum(p.stat().st_size for p in out.iterdir() if p.name != "model.safetensors")
    full = sum(p.stat().st_size for p in src.glob("model-*.safetensors"))
    assert others < 64_000 and weights + others < 0.7 * full  # 4 of 9 experts kept (was: slice > 2x the full model)
    assert tree_hash(src) == before and leftovers(tmp_path) == []


def test_a_link_out_of_the_checkpoint_is_refused(tiny_ckpt, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (src / "tokenizer_config.json").symlink_to(secret)
    assert_one_line_error(
        invoke("extract", src, "--experts", "0,1,5", "--out", tmp_path / "slice"), "outside the checkpoint"
    )
    assert not (tmp_path / "slice").exists() and leftovers(tmp_path) == []
    (src / "tokenizer_config.json").unlink()
    (src / "tokenizer_config.json").symlink_to(src / "generation_config.json")  # a link inside the folder is fine
    assert [p.name for p in copied_files(src)] == ["generation_config.json", "tokenizer_config.json"]


# ---- two writers of the same output --------------------------------------------------------------------------


@pytest.mark.slow
def test_two_extracts_to_the_same_out_one_refuses(tiny_ckpt, tmp_path):
    out, before = tmp_path / "slice", tree_hash(tiny_ckpt)
    args = ["extract", str(tiny_ckpt), "--experts", "0,1,5", "--out", str(out)]
    env = {**os.environ, "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SLOW_EXTRACT, "3", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    assert sorted(r.returncode for r in results) == [0, 2], [r.stderr for r in results]
    loser = next(r for r in results if r.returncode == 2)
    assert_one_line_error(loser, str(out), "being written by another emo-slice process", "pid")
    assert Checkpoint(out).config.num_experts == 4 and json.loads((out / "slice.json").read_text())["files"]
    assert (out / MARKER).is_file() and leftovers(tmp_path) == [] and tree_hash(tiny_ckpt) == before


# ---- OSError: one line naming the path, checked before work, temporaries removed --------------------------


def test_unwritable_output_fails_before_eval_or_profile_computes(fixtures, tmp_path, monkeypatch, no_model_runs):
    model, task = fixtures / "emo-tiny", _task(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = tree_hash(tmp_path)
    for cmd in (["eval", model, "--task", task], ["profile", model, "--examples", task]):
        assert_one_line_error(invoke(*cmd, "--out", blocker / "r.json"), str(blocker), "is a file, not a folder")
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    if ROOT:  # what access() says to a non-root user in a 0o555 folder
        real = os.access
        monkeypatch.setattr(artifacts.os, "access", lambda p, m: False if Path(p) == ro else real(p, m))
    for cmd in (["eval", model, "--task", task], ["profile", model, "--examples", task]):
        assert_one_line_error(invoke(*cmd, "--out", ro / "r.json"), str(ro), "permission denied")
    ro.chmod(0o755)
    ro.rmdir()
    assert tree_hash(tmp_path) == before and leftovers(tmp_path) == []


def test_disk_full_while_writing_leaves_the_old_output(tiny_ckpt, fixtures, tmp_path, monkeypatch):
    import emo_slice.io.writer as writer

    out = tmp_path / "slice"
    assert invoke("extract", tiny_ckpt, "--experts", "0,1,5", "--out", out).returncode == 0
    before = tree_hash(tmp_path)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer.ShardWriter, "finish", full)
    proc = invoke("extract", tiny_ckpt, "--experts", "1,2,3", "--out", out, "--overwrite")
    assert_one_line_error(proc, f"cannot write {out}", "No space left on device", "nothing was written")
    assert_one_line_error(invoke("extract", tiny_ckpt, "--experts", "1,2,3", "--out", tmp_path / "new"), "disk is full")
    monkeypatch.undo()
    results, task = tmp_path / "r.json", _task(tmp_path)
    results.write_text(json.dumps({"format": "emo-slice-results", "results": "old"}))  # an old emo-slice result
    before = tree_hash(tmp_path)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst) == str(results):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", replace)
    proc = invoke("eval", fixtures / "emo-tiny", "--task", task, "--out", results, "--overwrite")
    assert_one_line_error(proc, f"cannot write {results}", "disk is full")
    assert tree_hash(tmp_path) == before and leftovers(tmp_path) == []


def test_unreadable_source_is_one_line_naming_it(tiny_ckpt, tmp_path, monkeypatch):
    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    (src / "README.md").write_text("card")
    before, out = tree_hash(src), tmp_path / "slice"
    if ROOT:  # root reads anything: make the copy fail as an unreadable file would
        import emo_slice.slicing.extract as ex

        def denied(a, b, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(a))

        monkeypatch.setattr(ex.shutil, "copy2", denied)
    else:
        (src / "README.md").chmod(0)
    proc = invoke("extract", src, "--experts", "0,1,5", "--out", out)
    (src / "README.md").chmod(0o644)
    assert_one_line_error(proc, f"{(src / 'README.md').resolve()}: Permission denied", "permissions")
    assert not out.exists() and leftovers(tmp_path) == [] and tree_hash(src) == before


# ---- kill -9 leaves temporaries the next run removes ----------------------------------------------------


@pytest.mark.slow
def test_kill_9_during_extract_then_a_rerun_cleans_up(tiny_ckpt, tmp_path):
    out = tmp_path / "slice"
    args = ["extract", str(tiny_ckpt), "--experts", "0,1,5", "--out", str(out)]
    p = subprocess.Popen(
        [sys.executable, "-c", SLOW_EXTRACT, "60", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    tmp = tmp_path / f".slice.tmp-{p.pid}"
    deadline = time.time() + 60
    while not tmp.is_dir() and time.time() < deadline:  # the writer is inside extract, holding the lock
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert tmp.is_dir() and (tmp_path / ".slice.lock").exists()  # what kill -9 leaves behind
    proc = invoke("extract", *args[1:])
    assert proc.returncode == 0, proc.stderr
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["slice"]
    assert Checkpoint(out).config.num_experts == 4


# ---- Ctrl-C during pretrain says what was written -----------------------------------------------------


def test_interrupted_pretrain_names_the_last_checkpoint(tmp_path, monkeypatch):
    import emo_slice.train.trainer as trainer

    run = tmp_path / "run"

    class Interrupted:
        def __init__(self, cfg):
            run.mkdir(exist_ok=True)
            (run / "train_config.json").write_text("{}")
            self.rank = 1  # no banner

        def run(self):
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "Trainer", Interrupted)
    args = ("pretrain", "--out", run, "--data", tmp_path / "c.txt", "--preset", "tiny")
    assert_one_line_error(invoke(*args), "interrupted before the first checkpoint", "--overwrite", code=130)
    (run / "step-000020").mkdir()
    (run / "latest").write_text("step-000020\n")
    line = assert_one_line_error(invoke(*args, "--resume"), code=130)
    assert line == f"error: interrupted; the last checkpoint is {run / 'step-000020'}; continue with --resume"


def test_interrupted_quickstart_says_what_it_holds(tmp_path, monkeypatch):
    from emo_slice.workflows import quickstart

    def interrupted(commands, echo=print):
        (tmp_path / "qs" / "data").mkdir()  # a step got this far
        raise KeyboardInterrupt

    monkeypatch.setattr(quickstart, "run", interrupted)
    proc = invoke("quickstart", "--out", tmp_path / "qs", "--size", "tiny")
    assert_one_line_error(proc, "interrupted;", "holds the steps done so far", "--overwrite", code=130)
    assert (tmp_path / "qs" / MARKER).is_file() and leftovers(tmp_path) == []
    assert quickstart.prepare_out(tmp_path / "qs", overwrite=True) and not (tmp_path / "qs").exists()


def test_interrupted_extract_wrote_nothing(tiny_ckpt, tmp_path, monkeypatch):
    import emo_slice.io.writer as writer

    def interrupt(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.ShardWriter, "finish", interrupt)
    proc = invoke("extract", tiny_ckpt, "--experts", "0,1,5", "--out", tmp_path / "a" / "slice")
    assert_one_line_error(proc, "interrupted; nothing was written", code=130)
    assert list(tmp_path.iterdir()) == []  # no temporary, no lock, not even the parent folder made for it


# ---- a malformed size is one line, before any work ----------------------------------------------------


def test_extract_refuses_a_malformed_max_shard_size_before_work(tiny_ckpt, tmp_path):
    for size in ("1.5.5MB", "0", "-1GB", "5XB"):
        proc = invoke("extract", tiny_ckpt, "--experts", "0,1,5", "--max-shard-size", size, "--out", tmp_path / "s")
        assert_one_line_error(proc, "--max-shard-size")
    assert list(tmp_path.iterdir()) == []
