"""`--overwrite` replaces only what emo-slice wrote: a folder with its marker, a file
whose contents say emo-slice wrote it; a run folder only when it is an emo-slice run holding nothing else;
checkpoint pruning only deletes checkpoints the run recorded writing.

Each refusal asserts exit 2, one `error:` line, no traceback, and the working folder byte for byte as before;
each allowed replacement checks that the new output is there.
"""

import json
import shutil

import pytest
from conftest import assert_refused, invoke, tiny_train_config, tree_state, word_corpus

from emo_slice.artifacts import MARKER, check_output
from emo_slice.errors import UsageError
from emo_slice.ownership import wrote

TINY = ["--preset", "tiny", "--seq-len", "16", "--batch-size", "2", "--steps", "2", "--set", "progress=false"]


@pytest.fixture
def corpus(tmp_path):
    return word_corpus(tmp_path / "train.jsonl", 60)


def _task(path):
    path.write_text(
        "".join(json.dumps({"context": f"q{i}", "choices": ["a", "b"], "label": i % 2}) + "\n" for i in range(4))
    )
    return path


# ---- pretrain --out --overwrite ------------------------------------------------------------------------------


def test_pretrain_overwrite_never_deletes_a_folder_that_is_not_an_emo_slice_run(corpus, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "train_config.json").write_text("{}")  # looks like a run: what the check used to trust
    (out / "thesis.tex").write_text("years of work")
    before = tree_state(tmp_path)
    proc = invoke("pretrain", "--data", corpus, "--out", out, "--overwrite", *TINY)
    assert_refused(proc, tmp_path, before, str(out), "emo-slice")


def test_pretrain_overwrite_replaces_an_emo_slice_run_but_not_the_files_put_in_it(corpus, tmp_path):
    out = tmp_path / "run"
    assert invoke("pretrain", "--data", corpus, "--out", out, *TINY).returncode == 0
    assert (out / MARKER).is_file()
    (out / "thesis.tex").write_text("years of work")
    before = tree_state(tmp_path)
    proc = invoke("pretrain", "--data", corpus, "--out", out, "--overwrite", *TINY)
    assert_refused(proc, tmp_path, before, "thesis.tex")
    (out / "thesis.tex").unlink()
    proc = invoke("pretrain", "--data", corpus, "--out", out, "--overwrite", *TINY, "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "train_config.json").read_text())["seed"] == 3


# ---- pruning ------------------------------------------------------------------------------------------------


def test_pruning_deletes_only_checkpoints_the_run_recorded(tmp_path):
    from emo_slice.train.trainer import pretrain

    corpus = word_corpus(tmp_path / "train.jsonl", 60)
    out = tmp_path / "run"
    kw = dict(steps=4, batch_size=2, seq_len=16, save_every=1, keep_last=1)
    pretrain(tiny_train_config(corpus, out, stop_after=2, **kw))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-000002"]
    backup = out / "step-000000-mybackup"
    shutil.copytree(out / "step-000002", backup)  # the user's own copy, named like a checkpoint
    (backup / "notes.txt").write_text("mine")
    mine = tree_state(backup)
    pretrain(tiny_train_config(corpus, out, resume=True, **kw))
    assert tree_state(backup) == mine
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("step-"))
    assert kept == ["step-000000-mybackup", "step-000003"]  # the last periodic checkpoint; final is step 4


def test_resume_refuses_a_checkpoint_folder_it_did_not_record(stopped_run_dir, tmp_path):
    """A folder named like one of the run's future checkpoints would be replaced by the save: refused first."""
    shutil.copytree(stopped_run_dir, tmp_path / "w", symlinks=True)
    run = tmp_path / "w" / "run"
    shutil.copytree(run / "step-000001", run / "step-000002")
    (run / "step-000002" / "notes.txt").write_text("mine")
    before = tree_state(tmp_path)
    proc = invoke("pretrain", "--out", run, "--data", run.parent / "train.jsonl", "--resume", "--json")
    assert_refused(proc, tmp_path, before, "step-000002", "not a checkpoint this run")


# ---- files: results, profiles, predictions, pictures, GGUF ---------------------------------------------------


@pytest.mark.parametrize("name", ["package.json", "results.json", "r.jsonl"])
def test_eval_overwrite_refuses_a_file_emo_slice_did_not_write(tiny_ckpt, tmp_path, name):
    task = _task(tmp_path / "task.jsonl")
    (tmp_path / name).write_text('{"name": "my-app", "version": "1.0.0"}\n')
    before = tree_state(tmp_path)
    for flag in ("--out", "--predictions"):
        proc = invoke("eval", tiny_ckpt, "--task", task, flag, tmp_path / name, "--overwrite")
        assert_refused(proc, tmp_path, before, str(tmp_path / name), "not an emo-slice")


def test_eval_overwrite_replaces_its_own_results_and_predictions(tiny_ckpt, tmp_path):
    task, out, preds = _task(tmp_path / "task.jsonl"), tmp_path / "r.json", tmp_path / "p.jsonl"
    for _ in range(2):
        proc = invoke("eval", tiny_ckpt, "--task", task, "--out", out, "--predictions", preds, "--overwrite")
        assert proc.returncode == 0, proc.stderr
    assert wrote(out, "results") and wrote(preds, "predictions")
    assert json.loads(out.read_text())["format"] == "emo-slice-results"


def test_eval_predictions_onto_its_lm_input_is_refused(tiny_ckpt, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"document number {i}"}) + "\n" for i in range(3)))
    before = tree_state(tmp_path)
    for extra in ([], ["--overwrite"]):
        proc = invoke("eval", tiny_ckpt, "--lm", docs, "--predictions", docs, *extra)
        assert_refused(proc, tmp_path, before, str(docs))


def test_sweep_overwrite_refuses_user_files_by_content_not_suffix(tiny_ckpt, tmp_path):
    task = _task(tmp_path / "task.jsonl")
    (tmp_path / "package.json").write_text('{"name": "my-app"}\n')
    (tmp_path / "holiday.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0\0\0\rIHDR" + b"\0" * 17)
    before = tree_state(tmp_path)
    args = ["sweep", tiny_ckpt, "--examples", task, "--shots", "1", "--task", task, "--keep", "4"]
    proc = invoke(*args, "--out", tmp_path / "package.json", "--overwrite")
    assert_refused(proc, tmp_path, before, "package.json", "not an emo-slice sweep")
    proc = invoke(*args, "--out", tmp_path / "s.json", "--plot", tmp_path / "holiday.png", "--overwrite")
    assert_refused(proc, tmp_path, before, "holiday.png", "not a picture emo-slice drew")


def test_a_picture_emo_slice_drew_is_recognised(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from emo_slice.workflows.sweep import write_plot

    rows = [
        {"kind": kind, "keep": 2, "share_of_bytes": 0.5, "results": {"t": {"acc": 0.4}}}
        for kind in ("profile", "random")
    ]
    data = {
        "format": "emo-slice-sweep",
        "sweeps": [{"label": "m", "full": {"results": {"t": {"acc": 0.5}}}, "rows": rows}],
    }
    png, other = tmp_path / "plot.png", tmp_path / "holiday.png"
    assert write_plot(data, png, ["acc"])
    plt.plot([0, 1])
    plt.savefig(other)  # matplotlib's own Software text, not emo-slice's
    assert wrote(png, "png") and not wrote(other, "png") and not wrote(tmp_path / "absent.png", "png")
    assert check_output(png, overwrite=True, kind="png") == png
    with pytest.raises(UsageError, match="not a picture emo-slice drew"):
        check_output(other, overwrite=True, kind="png")


def test_export_overwrite_refuses_a_gguf_it_did_not_write(tiny_ckpt, tmp_path):
    pytest.importorskip("gguf")
    mine = tmp_path / "m.gguf"
    assert invoke("export", tiny_ckpt, "--format", "gguf", "--out", mine).returncode == 0
    assert wrote(mine, "gguf")
    theirs = tmp_path / "theirs.gguf"
    import gguf

    w = gguf.GGUFWriter(theirs, "llama")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    assert not wrote(theirs, "gguf")
    before = tree_state(tmp_path)
    proc = invoke("export", tiny_ckpt, "--format", "gguf", "--out", theirs, "--overwrite")
    assert_refused(proc, tmp_path, before, "theirs.gguf", "not a GGUF file emo-slice exported")
    assert invoke("export", tiny_ckpt, "--format", "gguf", "--out", mine, "--overwrite").returncode == 0


def test_profile_overwrite_refuses_a_json_that_is_not_a_profile(tiny_ckpt, tmp_path):
    task = _task(tmp_path / "task.jsonl")
    (tmp_path / "p.json").write_text('{"format": "emo-slice-results"}')  # emo-slice's, but not a profile
    before = tree_state(tmp_path)
    proc = invoke("profile", tiny_ckpt, "--examples", task, "--shots", "1", "--out", tmp_path / "p.json", "--overwrite")
    assert_refused(proc, tmp_path, before, "not an emo-slice profile")
