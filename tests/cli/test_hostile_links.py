"""Links and special files in every folder emo-slice reads: run folders with their
data and DCP shards, local benchmark folders and `save_to_disk` folders, the Hugging Face cache, model
folders on export.

One rule: regular files only; a link only when it resolves inside the folder (or, in the Hugging Face cache,
into the same repository's blobs); checked with stat before opening, so a FIFO is refused, never waited on.
Each case asserts exit 2, one `error:` line, no traceback, and the working folder byte for byte as before;
the FIFO cases run in a subprocess with a timeout (a hang fails the test instead of stalling it).
"""

import json
import os
import shutil

import pytest
from conftest import assert_refused, invoke, run_cli, tree_state

datasets = pytest.importorskip("datasets")

RESUME = ["--set", "progress=false", "--json"]
ARC = {
    "id": "a0",
    "question": "Which gas do plants absorb?",
    "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]},
    "answerKey": "B",
}


@pytest.fixture
def run(stopped_run_dir, tmp_path):
    shutil.copytree(stopped_run_dir, tmp_path / "w", symlinks=True)
    return tmp_path / "w" / "run"


def _resume(run):
    return invoke("pretrain", "--out", run, "--data", run.parent / "train.jsonl", "--resume", *RESUME)


def _move_out(path, outside):
    """Move path outside the run and leave a link to it (same bytes: only where they live differs)."""
    shutil.move(str(path), str(outside))
    os.symlink(outside, path)


# ---- run folders -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "member",
    [
        "step-000001/training_state/sharded/__0_0.distcp",
        "data",
        "data/train",
        "data/train/index.json",
        "data/meta.json",
        "log.jsonl",
    ],
)
def test_run_folder_member_linked_outside_is_refused_on_resume(run, tmp_path, member):
    _move_out(run / member, tmp_path / "elsewhere")
    before = tree_state(tmp_path)
    assert_refused(_resume(run), tmp_path, before, "outside")


def test_a_link_inside_the_run_folder_is_followed(run):
    """The rule is about where a link leads: one that stays in the run folder is read."""
    shard = run / "step-000001" / "training_state" / "sharded" / "__0_0.distcp"
    shutil.move(str(shard), str(run / "kept.distcp"))
    os.symlink(run / "kept.distcp", shard)
    proc = _resume(run)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 2


def test_a_fifo_in_the_run_folder_is_refused_on_resume(run, tmp_path):
    os.mkfifo(run / "data" / "train" / "notes")
    before = tree_state(tmp_path)
    args = ["pretrain", "--out", run, "--data", run.parent / "train.jsonl", "--resume", *RESUME]
    assert_refused(run_cli(*args, timeout=120), tmp_path, before, "not a regular file")


# ---- local benchmark folders and save_to_disk folders -----------------------------------------------------


def test_benchmark_split_file_linked_outside_its_folder_is_refused(tiny_ckpt, tmp_path):
    folder = tmp_path / "arc"
    folder.mkdir()
    outside = tmp_path / "private.jsonl"
    outside.write_text(json.dumps(ARC) + "\n")
    os.symlink(outside, folder / "test.jsonl")
    before = tree_state(tmp_path)
    assert_refused(invoke("eval", tiny_ckpt, "--task", f"arc_easy={folder}"), tmp_path, before, "outside")


def test_saved_dataset_listing_a_file_outside_is_refused(tiny_ckpt, tmp_path):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([ARC])}).save_to_disk(str(folder))
    state = folder / "test" / "state.json"
    doc = json.loads(state.read_text())
    arrow = folder / "test" / doc["_data_files"][0]["filename"]
    shutil.move(str(arrow), str(tmp_path / "elsewhere.arrow"))
    doc["_data_files"][0]["filename"] = "../../elsewhere.arrow"
    state.write_text(json.dumps(doc))
    before = tree_state(tmp_path)
    proc = invoke("eval", tiny_ckpt, "--task", f"arc_easy={folder}")
    assert_refused(proc, tmp_path, before, "state.json")


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.write_text("{"),
        lambda s: s.write_text("[]"),
        lambda s: s.write_text(json.dumps({"_data_files": "x"})),
        lambda s: s.write_text(json.dumps({"_data_files": [{"filename": 7}]})),
        lambda s: s.write_text("[" * 100_000),
    ],
)
def test_saved_dataset_with_a_bad_state_json_is_one_line(tiny_ckpt, tmp_path, damage):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"test": datasets.Dataset.from_list([ARC])}).save_to_disk(str(folder))
    damage(folder / "test" / "state.json")
    before = tree_state(tmp_path)
    for args in (
        ["eval", tiny_ckpt, "--task", f"arc_easy={folder}"],
        ["eval", tiny_ckpt, "--task", folder / "test"],
        ["eval", tiny_ckpt, "--lm", folder / "test"],
    ):
        assert_refused(invoke(*args), tmp_path, before, "state.json")


def test_corrupt_parquet_split_is_one_line(tiny_ckpt, tmp_path):
    folder = tmp_path / "arc"
    folder.mkdir()
    datasets.Dataset.from_list([ARC]).to_parquet(str(folder / "test-00000-of-00001.parquet"))
    data = (folder / "test-00000-of-00001.parquet").read_bytes()
    (folder / "test-00000-of-00001.parquet").write_bytes(data[: len(data) // 2] + b"\0" * 64)
    single = tmp_path / "single.parquet"
    single.write_bytes(b"PAR1 not really")
    before = tree_state(tmp_path)
    assert_refused(invoke("eval", tiny_ckpt, "--task", f"arc_easy={folder}"), tmp_path, before, "parquet")
    assert_refused(invoke("eval", tiny_ckpt, "--lm", single), tmp_path, before, str(single))


# ---- the Hugging Face cache --------------------------------------------------------------------------------


def _hub(root, kind: str, repo: str):
    base = root / f"{kind}--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "snapshots" / "0123abcd").mkdir(parents=True)
    (base / "blobs").mkdir()
    return base


def test_fifo_refs_main_in_the_dataset_cache_is_refused(tiny_ckpt, tmp_path):
    base = _hub(tmp_path / "hub", "datasets", "allenai/ai2_arc")
    os.mkfifo(base / "refs" / "main")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_DATASETS_CACHE": str(tmp_path / "ds")}
    before = tree_state(tmp_path)
    proc = run_cli("eval", tiny_ckpt, "--task", "arc_easy", env_extra=env, timeout=120)
    assert_refused(proc, tmp_path, before, "refs/main", "not a regular file")


def test_fifo_refs_main_in_the_model_cache_is_refused(tmp_path):
    base = _hub(tmp_path / "hub", "models", "someone/emo-tiny")
    os.mkfifo(base / "refs" / "main")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    before = tree_state(tmp_path)
    proc = run_cli("info", "someone/emo-tiny", env_extra=env, timeout=120)
    assert_refused(proc, tmp_path, before, "refs/main", "not a regular file")


def test_cached_snapshot_file_linked_outside_its_repo_is_refused(tiny_ckpt, tmp_path, monkeypatch):
    base = _hub(tmp_path / "hub", "datasets", "allenai/ai2_arc")
    (base / "refs" / "main").write_text("0123abcd")
    snap = base / "snapshots" / "0123abcd"
    (snap / "ARC-Easy").mkdir()
    other = _hub(tmp_path / "hub", "datasets", "someone/else")
    datasets.Dataset.from_list([ARC]).to_parquet(str(other / "blobs" / "abc"))
    os.symlink(other / "blobs" / "abc", snap / "ARC-Easy" / "test-00000-of-00001.parquet")
    (snap / "README.md").write_text(
        "---\nconfigs:\n- config_name: ARC-Easy\n  data_files:\n  - split: test\n    path: ARC-Easy/test-*\n---\n"
    )
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    before = tree_state(tmp_path)
    assert_refused(invoke("eval", tiny_ckpt, "--task", "arc_easy"), tmp_path, before, "outside")
    # the same file as a blob of its own repository is read
    os.unlink(snap / "ARC-Easy" / "test-00000-of-00001.parquet")
    shutil.copy(other / "blobs" / "abc", base / "blobs" / "abc")
    os.symlink("../../../blobs/abc", snap / "ARC-Easy" / "test-00000-of-00001.parquet")
    proc = invoke("eval", tiny_ckpt, "--task", "arc_easy", "--json")
    assert proc.returncode == 0, proc.stderr


# ---- model folders ----------------------------------------------------------------------------------------


def test_fifo_generation_config_on_export_is_refused(tiny_ckpt, tmp_path):
    model = shutil.copytree(tiny_ckpt, tmp_path / "model")
    (model / "generation_config.json").unlink()
    os.mkfifo(model / "generation_config.json")
    before = tree_state(tmp_path)
    proc = run_cli("export", model, "--format", "qwen2-moe", "--out", tmp_path / "q", timeout=120)
    assert_refused(proc, tmp_path, before, "generation_config.json", "not a regular file")
    # GGUF carries no generation config: the FIFO is not read, and the export runs
    proc = run_cli("export", model, "--format", "gguf", "--out", tmp_path / "m.gguf", timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_fifo_prompt_task_and_profile_files_are_refused(tiny_ckpt, tmp_path):
    for name in ("p.txt", "t.jsonl", "prof.json", "e.txt"):
        os.mkfifo(tmp_path / name)
    before = tree_state(tmp_path)
    for args in (
        ["generate", tiny_ckpt, "--prompts", tmp_path / "p.txt"],
        ["eval", tiny_ckpt, "--task", tmp_path / "t.jsonl"],
        ["extract", tiny_ckpt, "--profile", tmp_path / "prof.json", "--keep", "4", "--out", tmp_path / "s"],
        ["profile", tiny_ckpt, "--examples", tmp_path / "e.txt", "--out", tmp_path / "x.json"],
    ):
        assert_refused(run_cli(*args, timeout=120), tmp_path, before)
