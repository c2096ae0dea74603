"""Hostile JSON in every file emo-slice reads: nested 100,000 deep, an integer of
5,000 digits, a number out of range, a lone surrogate, a truncated log line.

Each case writes the file here (no checked-in binaries), runs the command that reads it, and asserts exit 2,
one `error:` line naming the file, no traceback, and the whole working folder byte for byte as before.
"""

import json
import shutil

import pytest
from conftest import assert_refused, invoke, tree_state

DEEP = "[" * 100_000 + "]" * 100_000
HUGE = "9" * 5000
BAD = {
    "deep": lambda: '{"a": ' + DEEP + "}",
    "huge-int": lambda: '{"a": ' + HUGE + "}",
    "inf": lambda: '{"a": 1e999}',
    "surrogate": lambda: '{"a": "\\ud800"}',
}
NEEDLE = {"deep": "nested", "huge-int": "digits", "inf": "out of range", "surrogate": "surrogate"}


@pytest.fixture
def model(tiny_ckpt, tmp_path):
    return shutil.copytree(tiny_ckpt, tmp_path / "model")


# ---- files of a checkpoint ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", BAD)
def test_config_json(model, tmp_path, kind):
    cfg = json.loads((model / "config.json").read_text())
    text = json.dumps(cfg)[:-1] + ', "extra_key": ' + BAD[kind]() + "}"
    (model / "config.json").write_text(text)
    before = tree_state(tmp_path)
    for args in (["info", model], ["extract", model, "--experts", "0,1,2,3,4", "--out", tmp_path / "s"]):
        assert_refused(invoke(*args), tmp_path, before, "config.json", NEEDLE[kind])


@pytest.mark.parametrize("kind", ["deep", "huge-int"])
def test_tokenizer_json(model, tmp_path, kind):
    (model / "tokenizer.json").write_text(BAD[kind]())
    before = tree_state(tmp_path)
    proc = invoke("generate", model, "--prompt", "hi", "--max-new-tokens", "1")
    assert_refused(proc, tmp_path, before, "tokenizer.json", NEEDLE[kind])


@pytest.mark.parametrize("name", ["slice.json", "generation_config.json"])
def test_side_files_on_export_and_extract(model, tmp_path, name):
    (model / name).write_text(BAD["huge-int"]())
    before = tree_state(tmp_path)
    for args in (
        ["export", model, "--format", "qwen2-moe", "--out", tmp_path / "q"],
        ["extract", model, "--experts", "0,1,2,3,4", "--out", tmp_path / "s"],
    ):
        proc = invoke(*args)
        if name == "generation_config.json" and args[0] == "extract":
            continue  # copied as a file, not read
        assert_refused(proc, tmp_path, before, name, "digits")


# ---- files given on the command line ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["deep", "huge-int"])
def test_profile_file(model, tmp_path, kind):
    p = tmp_path / "p.json"
    p.write_text('{"format": "emo-slice-profile", "layers": ' + BAD[kind]() + "}")
    before = tree_state(tmp_path)
    proc = invoke("extract", model, "--profile", p, "--keep", "4", "--out", tmp_path / "s")
    assert_refused(proc, tmp_path, before, str(p), NEEDLE[kind])


GOOD = {
    "task": lambda i: {"context": f"q{i}", "choices": ["a", "b"], "label": i % 2},
    "gen": lambda i: {"prompt": f"q{i}", "target": "a"},
    "prompts": lambda i: {"prompt": f"q{i}"},
    "examples": lambda i: {"text": f"some text {i}"},
}


@pytest.mark.parametrize("kind", BAD)
def test_task_prompt_example_and_generative_files(model, tmp_path, kind):
    files = {}
    for name, good in GOOD.items():
        files[name] = tmp_path / f"{name}.jsonl"
        files[name].write_text(json.dumps(good(0)) + "\n" + json.dumps(good(1)) + "\n" + BAD[kind]() + "\n")
    before = tree_state(tmp_path)
    for name, args in (
        ("task", ["eval", model, "--task", files["task"]]),
        ("gen", ["eval", model, "--gen-task", files["gen"]]),
        ("prompts", ["generate", model, "--prompts", files["prompts"], "--max-new-tokens", "1"]),
        ("examples", ["profile", model, "--examples", files["examples"], "--out", tmp_path / "p.json"]),
    ):
        assert_refused(invoke(*args), tmp_path, before, f"{files[name]}:3", NEEDLE[kind])


# ---- files of a run folder (resume) ------------------------------------------------------------------------


@pytest.fixture
def run(stopped_run_dir, tmp_path):
    shutil.copytree(stopped_run_dir, tmp_path / "w", symlinks=True)
    return tmp_path / "w" / "run"


RESUME = ["--set", "progress=false", "--json"]


@pytest.mark.parametrize(
    "member", ["train_config.json", "log.jsonl", "step-000001/training_state/sharded/metadata.json"]
)
@pytest.mark.parametrize("kind", ["deep", "huge-int"])
def test_run_folder_files_on_resume(run, member, kind):
    path = run / member
    if member == "log.jsonl":
        path.write_text(path.read_text() + BAD[kind]() + "\n")
    else:
        path.write_text(BAD[kind]())
    work = run.parent
    before = tree_state(work)
    proc = invoke("pretrain", "--out", run, "--data", work / "train.jsonl", "--resume", *RESUME)
    assert_refused(proc, work, before, member.split("/")[-1], NEEDLE[kind])


def test_damaged_token_files_record_is_rebuilt(run):
    """data/meta.json is a cache record: a hostile one is not trusted, the token files are made again."""
    (run / "data" / "meta.json").write_text(BAD["deep"]())
    proc = invoke("pretrain", "--out", run, "--data", run.parent / "train.jsonl", "--resume", *RESUME)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "data" / "meta.json").read_text())["train_tokens"] > 0


def test_a_truncated_last_log_line_is_dropped_on_resume(run):
    """A kill during an append leaves half a record: resume continues, the log keeps the whole records."""
    log = run / "log.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"kind": "train", "step": 2, "lo')
    proc = invoke("pretrain", "--out", run, "--data", run.parent / "train.jsonl", "--resume", *RESUME)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(ln) for ln in log.read_text().splitlines()]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2]
    assert json.loads(proc.stdout)["steps"] == 2
