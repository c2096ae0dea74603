"""Options and files checked before work, against the model: sampling settings, generation length, labels,
profile values and fingerprints, sweep slice folders, exported tokenizers, tampered training state.

Each refusal asserts exit 2, one `error:` line, no traceback, and the working folder byte for byte as before.
"""

import json
import shutil

import pytest
import torch
from conftest import assert_refused, invoke, run_cli, tree_state
from safetensors import safe_open
from safetensors.torch import save_file

RESUME = ["--set", "progress=false", "--json"]


def _task(path, labels=(0, 1, 0, 1)):
    path.write_text(
        "".join(
            json.dumps({"context": f"q{i}", "choices": ["a", "b"], "label": y}) + "\n" for i, y in enumerate(labels)
        )
    )
    return path


# ---- generate ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", ["nan", "inf", "-1", "1e-45", "-0.0001"])
def test_generate_refuses_a_temperature_that_cannot_sample(tiny_ckpt, tmp_path, temperature):
    before = tree_state(tmp_path)
    proc = invoke("generate", tiny_ckpt, "--prompt", "hi", "--sample", "--temperature", temperature)
    assert_refused(proc, tmp_path, before, "--temperature")


@pytest.mark.parametrize("top_p", ["nan", "0", "1.5", "-1"])
def test_generate_refuses_a_top_p_out_of_range(tiny_ckpt, tmp_path, top_p):
    before = tree_state(tmp_path)
    proc = invoke("generate", tiny_ckpt, "--prompt", "hi", "--sample", "--top-p", top_p)
    assert_refused(proc, tmp_path, before, "--top-p")


def test_generate_temperature_zero_is_greedy(tiny_ckpt):
    args = ["generate", tiny_ckpt, "--prompt", "hi", "--max-new-tokens", "4", "--json"]
    greedy, zero = invoke(*args), invoke(*args, "--sample", "--temperature", "0")
    assert greedy.returncode == 0 and zero.returncode == 0, zero.stderr
    assert json.loads(greedy.stdout)["completions"] == json.loads(zero.stdout)["completions"]


def test_generate_refuses_max_new_tokens_beyond_the_context_at_once(tiny_ckpt, tmp_path):
    """What eval refuses at once generate refused only after decoding for ever."""
    from emo_slice.model.config import EmoConfig

    context = EmoConfig.from_file(tiny_ckpt / "config.json").max_position_embeddings
    before = tree_state(tmp_path)
    for n in (10**9, context, context - 1):  # the prompt takes positions too
        proc = run_cli("generate", tiny_ckpt, "--prompt", "hello", "--max-new-tokens", n, timeout=120)
        assert_refused(proc, tmp_path, before, "--max-new-tokens", "context")


# ---- labels --------------------------------------------------------------------------------------------------


def test_unlabelled_rows_are_refused_with_a_hint(tiny_ckpt, tmp_path):
    task = _task(tmp_path / "t.jsonl", labels=(0, -1, 1, 0))
    before = tree_state(tmp_path)
    assert_refused(invoke("eval", tiny_ckpt, "--task", task), tmp_path, before, "-1", "unlabelled")


@pytest.mark.parametrize("label", [-1, 2, 7])
def test_benchmark_labels_must_index_the_choices(tiny_ckpt, tmp_path, label):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "piqa"
    rows = [{"goal": f"g{i}", "sol1": "a", "sol2": "b", "label": i % 2} for i in range(3)]
    rows[1]["label"] = label
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    before = tree_state(tmp_path)
    proc = invoke("eval", tiny_ckpt, "--task", f"piqa={folder}")
    line = assert_refused(proc, tmp_path, before, "row 1", "label")
    assert ("unlabelled" in line) == (label == -1), line


# ---- profiles -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def profile_of_tiny(tiny_ckpt, tmp_path_factory):
    from emo_slice.slicing.profile import ProfileSettings, profile_model

    d = tmp_path_factory.mktemp("prof")
    docs = d / "d.jsonl"
    docs.write_text(json.dumps({"text": "some text to profile " * 5}) + "\n")
    return profile_model(tiny_ckpt, ProfileSettings(examples=str(docs)))


@pytest.mark.parametrize(
    "damage,needle",
    [
        (lambda p: p["layers"][0]["scores"]["mean-prob"].__setitem__(0, -0.5), "negative"),
        (lambda p: p["layers"][1]["scores"]["frequency"].__setitem__(2, -1e-9), "negative"),
        (lambda p: p["layers"][0]["scores"]["count"].__setitem__(0, -3), "negative"),
        (lambda p: p["layers"][0]["scores"]["mean-prob"].__setitem__(0, 2.0), "probabilit"),
    ],
)
def test_profile_values_must_be_non_negative(tiny_ckpt, tmp_path, profile_of_tiny, damage, needle):
    p = json.loads(json.dumps(profile_of_tiny))
    damage(p)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(p))
    before = tree_state(tmp_path)
    proc = invoke("extract", tiny_ckpt, "--profile", path, "--keep", "4", "--out", tmp_path / "s")
    assert_refused(proc, tmp_path, before, "--profile", needle)


@pytest.mark.parametrize("edit", ["delete", "edit"])
def test_a_profile_of_another_model_is_refused_whatever_its_digest_says(tmp_path, profile_of_tiny, tiny_ckpt, edit):
    """Same architecture, other weights: the router digest is recomputed from the model, never trusted."""
    from emo_slice.io.build import random_checkpoint

    other = random_checkpoint(tmp_path / "other", "tiny", seed=7)
    p = json.loads(json.dumps(profile_of_tiny))
    if edit == "delete":
        del p["model"]["router_digest"]
    else:
        p["model"]["router_digest"] = "0" * 16
    path = tmp_path / "p.json"
    path.write_text(json.dumps(p))
    before = tree_state(tmp_path)
    proc = invoke("extract", other, "--profile", path, "--keep", "4", "--out", tmp_path / "s")
    assert_refused(proc, tmp_path, before, "--profile", "profile this model")
    proc = invoke("extract", tiny_ckpt, "--profile", path, "--keep", "4", "--out", tmp_path / "s")
    assert_refused(proc, tmp_path, before, "--profile")  # its own model too: the file was edited


# ---- sweep ------------------------------------------------------------------------------------------------------


def test_two_sweep_models_with_the_same_folder_name_get_their_own_slices(tiny_ckpt, tmp_path):
    from emo_slice.workflows.sweep import labels_of

    a, b = tmp_path / "a" / "emo", tmp_path / "b" / "emo"
    shutil.copytree(tiny_ckpt, a)
    shutil.copytree(tiny_ckpt, b)
    labels = labels_of([a, b])
    assert len(set(labels)) == 2 and labels == ["a-emo", "b-emo"]
    assert labels_of([tmp_path / "x" / "emo", tmp_path / "y" / "run" / "final"]) == ["emo", "run"]
    assert len(set(labels_of([a, a.parent / ".." / "a" / "emo"]))) == 2


# ---- export ---------------------------------------------------------------------------------------------------


def test_export_refuses_a_tokenizer_with_ids_beyond_the_embedding(tiny_ckpt, tmp_path):
    from tokenizers import Tokenizer, models

    model = shutil.copytree(tiny_ckpt, tmp_path / "model")
    vocab = {f"<0x{b:02X}>": b for b in range(256)} | {"hello": 5000}
    Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True)).save(str(model / "tokenizer.json"))
    before = tree_state(tmp_path)
    assert_refused(invoke("eval", model, "--lm", model / "config.json"), tmp_path, before, "token ids up to 5000")
    for fmt, out in (("qwen2-moe", "q"), ("gguf", "m.gguf")):
        proc = invoke("export", model, "--format", fmt, "--out", tmp_path / out)
        assert_refused(proc, tmp_path, before, "token ids up to 5000")


# ---- tampered training state --------------------------------------------------------------------------------


@pytest.fixture
def run(stopped_run_dir, tmp_path):
    shutil.copytree(stopped_run_dir, tmp_path / "w", symlinks=True)
    return tmp_path / "w" / "run"


def _resume(run):
    """Resume with the data the run was started on (the same path: its token files are reused, not rebuilt)."""
    data = json.loads((run / "train_config.json").read_text())["data"]
    return invoke("pretrain", "--out", run, "--data", data, "--resume", *RESUME)


def _edit_manifest(run, edit):
    path = run / "step-000001" / "training_state" / "state.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    key = next(iter(meta))
    doc = json.loads(meta[key])
    edit(doc)
    save_file({}, str(path), metadata={key: json.dumps(doc)})


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["param_groups"][0].__setitem__("lr", "fast"),
        lambda d: d["param_groups"][0].__setitem__("betas", [0.9]),
        lambda d: d["param_groups"][0].__setitem__("weight_decay", None),
        lambda d: d["param_groups"][0].__setitem__("eps", -1.0),
        lambda d: d["param_groups"][0].pop("lr"),
        lambda d: d["param_groups"][0].__setitem__("params", d["param_groups"][0]["params"][:-1]),
    ],
)
def test_a_tampered_optimizer_manifest_is_one_line(run, tmp_path, edit):
    _edit_manifest(run, edit)
    before = tree_state(tmp_path)
    assert_refused(_resume(run), tmp_path, before, "step-000001")


def test_a_tampered_rng_state_is_one_line(run, tmp_path):
    from emo_slice.train.dcp import load_sharded, read_metadata

    sharded = run / "step-000001" / "training_state" / "sharded"
    md = read_metadata(sharded).state_dict_metadata
    state = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in md.items() if hasattr(v, "size")}
    load_sharded(sharded, state)
    state["rng/cpu/0"] = torch.zeros_like(state["rng/cpu/0"])  # the right size, not a generator state
    from emo_slice.train.dcp import save_sharded

    shutil.rmtree(sharded)
    sharded.mkdir()
    save_sharded(sharded, state)
    before = tree_state(tmp_path)
    assert_refused(_resume(run), tmp_path, before, "step-000001", "random")


def test_token_ids_beyond_the_vocabulary_in_resumed_data_are_one_line(run, tmp_path):
    import numpy as np

    shard = sorted((run / "data" / "train").glob("shard-*.bin"))[0]
    ids = np.fromfile(shard, dtype="<u4")
    ids[:] = 100_000  # beyond the tiny model's 256-token vocabulary
    ids.tofile(shard)
    before = tree_state(tmp_path)
    assert_refused(_resume(run), tmp_path, before, "token id", "vocabulary")
