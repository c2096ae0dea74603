"""Hostile run folders and bad input to pretrain, profile and eval.

Every refusal is one `error:` line, exit code 2, no traceback; nothing is written, the inputs are left as
they were (hashes), no code from a run folder runs, and a failed fresh pretrain leaves no run folder.
"""

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_one_line_error, invoke

from emo_slice.errors import EmoSliceError, UsageError
from emo_slice.train.config import train_preset
from emo_slice.train.trainer import Trainer, pretrain

WORDS = "apple banana cherry grape melon engine wheel brake motor gear road".split()
TINY = [
    "--preset",
    "tiny",
    "--seq-len",
    "16",
    "--batch-size",
    "2",
    "--set",
    "eval_batches=1",
    "--set",
    "progress=false",
    "--json",
]


def tree_hash(folder: Path) -> dict:
    """Relative path -> sha256 of every file under folder (links as their target text)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    docs = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))} for _ in range(120)]
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "train.jsonl", docs)


def _cfg(corpus, out, **kw):
    base = dict(
        data=str(corpus),
        out=str(out),
        seq_len=16,
        batch_size=2,
        steps=2,
        warmup_steps=1,
        eval_every=0,
        save_every=0,
        eval_batches=1,
        progress=False,
    )
    return train_preset("tiny", **{**base, **kw})


@pytest.fixture(scope="module")
def stopped_run(corpus, tmp_path_factory) -> Path:
    """A run stopped after step 1 of 2 (checkpoint step-000001, `latest` naming it): resumable."""
    out = tmp_path_factory.mktemp("runs") / "run"
    pretrain(_cfg(corpus, out, stop_after=1))
    return out


@pytest.fixture
def run(stopped_run, tmp_path) -> Path:
    """A private copy of the stopped run, to break."""
    return Path(shutil.copytree(stopped_run, tmp_path / "run", symlinks=True))


def _resume(run: Path, corpus):
    return invoke("pretrain", "--data", corpus, "--out", run, "--resume", *TINY)


# ---- nothing unsafe is loaded --------------------------------------------------------------------


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("where", ["state", "legacy"])
def test_resume_never_unpickles_a_crafted_training_state(run, corpus, tmp_path, where):
    marker = tmp_path / "pwned"
    ckpt = run / "step-000001"
    evil = {"step": 1, "optimizer": Evil(marker), "rng": torch.get_rng_state()}
    if where == "state":  # a pickle where the training state should be
        torch.save(evil, ckpt / "training_state" / "state.safetensors")
    else:  # only the pickle file older versions wrote
        shutil.rmtree(ckpt / "training_state")
        torch.save(evil, ckpt / "training_state.pt")
    before = tree_hash(run)
    r = _resume(run, corpus)
    assert_one_line_error(r, str(ckpt), "pickle" if where == "legacy" else "not a safetensors file")
    assert not marker.exists()  # nothing ran
    assert tree_hash(run) == before


@pytest.mark.parametrize(
    "latest, needle",
    [
        ("../elsewhere", "not a checkpoint folder of this run"),
        ("/etc", "not a checkpoint folder of this run"),
        ("step-000001/../../elsewhere", "not a checkpoint folder of this run"),
        ("outside-link", "outside the run folder"),  # any link out of the run folder is refused, read or not
        ("step-000009", "not a checkpoint folder of this run"),
        ("", "is empty"),
        (b"\xff\xfe\x00garbage", "not text"),
        (None, "no checkpoint"),
    ],
)
def test_resume_latest_must_name_a_checkpoint_folder_inside_the_run(run, corpus, tmp_path, latest, needle):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "step-000001", elsewhere)
    if latest == "outside-link":
        (run / "outside-link").symlink_to(elsewhere)
    if latest is None:
        (run / "latest").unlink()
    elif isinstance(latest, bytes):
        (run / "latest").write_bytes(latest)
    else:
        (run / "latest").write_text(latest + "\n")
    before, outside = tree_hash(run), tree_hash(elsewhere)
    assert_one_line_error(_resume(run, corpus), needle)
    assert tree_hash(run) == before and tree_hash(elsewhere) == outside


def test_resume_refuses_a_checkpoint_linked_from_outside(run, corpus, tmp_path):
    moved = tmp_path / "moved"
    shutil.move(run / "step-000001", moved)
    (run / "step-000001").symlink_to(moved)  # `latest` still says step-000001, but it lives elsewhere
    assert_one_line_error(_resume(run, corpus), "step-000001 is a symlink to", "outside the run folder")


def test_resume_still_continues_a_good_run_from_safetensors_state(run, corpus):
    r = _resume(run, corpus)
    assert r.returncode == 0, r.stderr
    assert (run / "latest").read_text().strip() == "final"
    assert not list(run.rglob("*.pt"))  # no pickle anywhere in the run folder


# ---- divergence -----------------------------------------------------------------------------------


def test_diverged_training_stops_with_one_line_and_saves_nothing(corpus, tmp_path):
    out = tmp_path / "r"
    r = invoke("pretrain", "--data", corpus, "--out", out, *TINY, "--steps", "4", "--lr", "1e6")
    assert_one_line_error(r, "diverged at step", "lower --lr", "loss")
    assert not out.exists()  # a fresh run that failed leaves nothing


def test_diverged_weights_are_never_saved(corpus, tmp_path, monkeypatch):
    """Even when the loss was still finite, non-finite weights are not written as a checkpoint."""
    t = Trainer(_cfg(corpus, tmp_path / "r", steps=2))
    t.train_step()
    with torch.no_grad():
        next(t.raw.parameters()).fill_(float("nan"))
    with pytest.raises(UsageError, match="diverged"):
        t.save("final")
    assert not (tmp_path / "r" / "final").exists() and not (tmp_path / "r" / "latest").exists()


def test_eval_refuses_a_model_with_non_finite_weights(tiny_ckpt, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    nan = Path(shutil.copytree(tiny_ckpt, tmp_path / "nan"))
    with safe_open(str(nan / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    d = load_file(nan / "model.safetensors")
    d["model.norm.weight"][:] = float("nan")
    save_file(d, nan / "model.safetensors", metadata=meta)
    task = write_jsonl(tmp_path / "t.jsonl", [{"context": "a", "choices": ["b", "c"], "label": 0}] * 3)
    out = tmp_path / "res.json"
    assert_one_line_error(invoke("eval", nan, "--task", task, "--out", out), "non-finite", "NaN")
    assert_one_line_error(invoke("eval", nan, "--lm", task, "--field", "context"), "non-finite")
    assert not out.exists()


# ---- tokenizer ids beyond the model's vocabulary ------------------------------------------------


EOS = {
    "id": 0,
    "content": "<|endoftext|>",
    "single_word": False,
    "lstrip": False,
    "rstrip": False,
    "normalized": False,
    "special": True,
}
SPARSE_TOKENIZER = {
    "version": "1.0",
    "added_tokens": [EOS],  # ids 0, 1 and 5000: three tokens, id 5000
    "model": {"type": "BPE", "vocab": {"<|endoftext|>": 0, "a": 1, "b": 5000}, "merges": []},
}


def test_eval_and_profile_refuse_a_tokenizer_larger_than_the_vocabulary(tiny_ckpt, tmp_path):
    bad = Path(shutil.copytree(tiny_ckpt, tmp_path / "bad"))
    (bad / "tokenizer.json").write_text(json.dumps(SPARSE_TOKENIZER))
    before = tree_hash(bad)
    task = write_jsonl(tmp_path / "t.jsonl", [{"context": "ab", "choices": ["a", "b"], "label": 0}] * 3)
    assert_one_line_error(invoke("eval", bad, "--task", task), "token ids up to 5000", "vocab_size is 256")
    out = tmp_path / "p.json"
    assert_one_line_error(
        invoke("profile", bad, "--examples", task, "--field", "context", "--out", out), "token ids up to 5000"
    )
    assert not out.exists() and tree_hash(bad) == before


def test_pretrain_refuses_an_unreadable_or_too_large_tokenizer(corpus, tmp_path):
    (tmp_path / "bad.json").write_text('{"nope')
    out = tmp_path / "r"
    assert_one_line_error(
        invoke("pretrain", "--data", corpus, "--out", out, *TINY, "--tokenizer", tmp_path / "bad.json"),
        "--tokenizer",
        "cannot be read",
    )
    assert not out.exists()
    (tmp_path / "sparse.json").write_text(json.dumps(SPARSE_TOKENIZER))
    cfg = _cfg(corpus, out, tokenizer=str(tmp_path / "sparse.json"), model={"vocab_size": 300})
    with pytest.raises(UsageError, match="token ids up to 5000"):
        Trainer(cfg)
    assert not out.exists()


# ---- invalid UTF-8 -------------------------------------------------------------------------------


def test_invalid_utf8_is_one_line_naming_file_and_line(tiny_ckpt, tmp_path):
    good = {"text": "hello", "context": "a", "choices": ["b", "c"], "label": 0}
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes((json.dumps(good) + "\n").encode() * 2 + b'{"text": "caf\xe9", "context": "x"}\n')
    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"fine\nalso fine\n\xff here\n")
    before = tree_hash(tmp_path)
    for args in (
        ("profile", tiny_ckpt, "--examples", bad, "--out", tmp_path / "p.json"),
        ("eval", tiny_ckpt, "--task", bad),
        ("eval", tiny_ckpt, "--lm", bad),
        ("pretrain", "--data", bad, "--out", tmp_path / "r", *TINY),
    ):
        assert_one_line_error(invoke(*args), f"{bad}:3 is not valid UTF-8")
    assert_one_line_error(
        invoke("profile", tiny_ckpt, "--examples", txt, "--out", tmp_path / "p.json"), f"{txt}:3 is not valid UTF-8"
    )
    assert tree_hash(tmp_path) == before  # no profile, no run folder


# ---- malformed profile, damaged run folders -------------------------------------------------------


def test_extract_malformed_profile_or_a_folder_is_one_line(tiny_ckpt, tmp_path):
    from emo_slice.slicing.profile import ProfileSettings, profile_model

    docs = write_jsonl(tmp_path / "d.jsonl", [{"text": "some text to profile " * 5}])
    prof = profile_model(tiny_ckpt, ProfileSettings(examples=str(docs)))
    broken = {
        "scores": lambda p: p["layers"][1]["scores"].__setitem__("reap", [1.0, "x"]),
        "layers": lambda p: p.__setitem__("layers", {"0": 1}),
        "one layer": lambda p: p["layers"].pop(),
        "nan": lambda p: p["layers"][0]["scores"].__setitem__("mean-prob", [float("nan")] * 8),
    }
    for name, damage in broken.items():
        p = json.loads(json.dumps(prof))
        damage(p)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(p))
        out = tmp_path / "s"
        r = invoke("extract", tiny_ckpt, "--keep", "4", "--profile", path, "--out", out)
        assert_one_line_error(r, "--profile")
        assert not out.exists(), name
    (tmp_path / "a-folder").mkdir()
    r = invoke("extract", tiny_ckpt, "--keep", "4", "--profile", tmp_path / "a-folder", "--out", tmp_path / "s")
    assert_one_line_error(r, "is a folder")


DAMAGE = {  # what to do to the run folder, and what the one line must say
    "truncate": (lambda st, cfg: st.write_bytes(st.read_bytes()[: st.stat().st_size // 2]), "truncated"),
    "config-garbage": (lambda st, cfg: cfg.write_text("{ not json"), "train_config.json"),
    "config-list": (lambda st, cfg: cfg.write_text("[1, 2]"), "train_config.json"),
    "config-type": (lambda st, cfg: cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "steps": "x"})), "steps"),
    "config-utf8": (lambda st, cfg: cfg.write_bytes(b'{"steps": "\xff"}'), "train_config.json"),
    "config-missing": (lambda st, cfg: cfg.unlink(), "no train_config.json"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_resume_damaged_run_folder_is_one_line(run, corpus, damage):
    act, needle = DAMAGE[damage]
    act(run / "step-000001" / "training_state" / "state.safetensors", run / "train_config.json")
    before = tree_hash(run)
    assert_one_line_error(_resume(run, corpus), needle)
    assert tree_hash(run) == before


# ---- a failed pretrain leaves nothing; no --resume / --overwrite ping-pong -------------------------


def test_failed_pretrain_leaves_nothing_and_the_rerun_starts(corpus, tmp_path):
    out = tmp_path / "r"
    missing = tmp_path / "missing.jsonl"
    assert_one_line_error(invoke("pretrain", "--data", missing, "--out", out, *TINY), "no such file")
    assert not out.exists()
    out.mkdir()  # an empty folder the user made stays, empty
    assert_one_line_error(invoke("pretrain", "--data", corpus, "--out", out, *TINY, "--lr", "1e6"), "diverged")
    assert out.is_dir() and not any(out.iterdir())
    r = invoke("pretrain", "--data", corpus, "--out", out, *TINY, "--steps", "1")
    assert r.returncode == 0, r.stderr


def test_a_run_with_no_checkpoint_points_to_overwrite_both_ways(corpus, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "train_config.json").write_text(json.dumps(_cfg(corpus, out).to_dict()))  # e.g. killed early
    assert_one_line_error(invoke("pretrain", "--data", corpus, "--out", out, *TINY), "--overwrite")
    r = invoke("pretrain", "--data", corpus, "--out", out, *TINY, "--resume")
    line = assert_one_line_error(r, "--overwrite")
    assert "without --resume" not in line.split(";")[-1]


# ---- profile memory is bounded, progress without a terminal ---------------------------------------


@pytest.fixture(scope="module")
def long_docs(tmp_path_factory) -> Path:
    rng = random.Random(1)
    docs = [{"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(10, 40)))} for _ in range(6)]
    return write_jsonl(tmp_path_factory.mktemp("long") / "docs.jsonl", docs)


def test_profile_in_bounded_chunks_equals_one_pass(tiny_ckpt, long_docs, monkeypatch):
    from emo_slice.io.loading import LayerwiseModel
    from emo_slice.slicing.profile import ProfileSettings, profile_model

    held, real = [], LayerwiseModel.hidden_states

    def counting(self, batches, **kw):
        batches = list(batches)
        held.append(sum(b["input_ids_BT"].numel() for b in batches))  # tokens whose activations this call holds at once
        return real(self, batches, **kw)

    monkeypatch.setattr(LayerwiseModel, "hidden_states", counting)
    base = dict(examples=str(long_docs), max_length=64, max_batch_tokens=128)
    one = profile_model(tiny_ckpt, ProfileSettings(**base))
    total = sum(held)
    assert held == [total] and total > 500
    held.clear()
    bounded = profile_model(tiny_ckpt, ProfileSettings(**base, max_tokens_in_memory=200))
    assert max(held) <= 200 and sum(held) == total and len(held) > 2  # at most 200 tokens held at a time
    assert bounded["inputs"]["chunks"] == len(held)
    for a, b in zip(one["layers"], bounded["layers"], strict=True):
        assert a["tokens"] == b["tokens"]
        for key, xs in a["scores"].items():
            assert xs == pytest.approx(b["scores"][key], rel=1e-12, abs=0), key
    with pytest.raises(UsageError, match="--greedy holds every"):  # greedy needs all tokens: refused above
        profile_model(tiny_ckpt, ProfileSettings(**base, max_tokens_in_memory=200, greedy=True, keep="4"))


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tiny_ckpt, long_docs, tmp_path, monkeypatch):
    from emo_slice import progress

    monkeypatch.setenv("EMO_SLICE_PROGRESS_QUIET", "0")  # every report printed: a line per layer pass
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    r = invoke(
        "profile",
        tiny_ckpt,
        "--examples",
        long_docs,
        "--out",
        tmp_path / "p.json",
        "--max-length",
        "64",
        "--max-tokens-in-memory",
        "300",
    )
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("profiling:")]
    chunks = json.loads((tmp_path / "p.json").read_text())["inputs"]["chunks"]
    assert chunks > 1 and lines[0].startswith(f"profiling: layer 0/{2 * chunks}, ")
    assert lines[-1].startswith(f"profiling: layer {2 * chunks}/{2 * chunks}, ") and "tokens/s" in lines[-1]
    assert len(lines) == 1 + 2 * chunks and "\x1b[" not in r.stderr  # one plain line per layer pass, no bar


# ---- results that look real but are not ----------------------------------------------------------


@pytest.mark.parametrize(
    "record, needle",
    [
        ({"id": "q1", "context": "a", "choices": ["only"], "label": 0}, "item 'q1': has 1 choice"),
        ({"id": "q2", "context": None, "choices": ["x", "y"], "label": 0}, "item 'q2': context is null"),
        ({"id": "q3", "context": "a", "choices": ["x", None], "label": 0}, "item 'q3': choices must be"),
        ({"id": "q4", "context": 7, "choices": ["x", "y"], "label": 0}, "item 'q4': context is 7"),
    ],
)
def test_unscorable_items_are_refused(tiny_ckpt, tmp_path, record, needle):
    task = write_jsonl(tmp_path / "t.jsonl", [{"id": "ok", "context": "a", "choices": ["x", "y"], "label": 1}, record])
    out = tmp_path / "r.json"
    assert_one_line_error(invoke("eval", tiny_ckpt, "--task", task, "--out", out), needle)
    assert not out.exists()


def test_pretrain_eval_batches_zero_is_refused(corpus, tmp_path):
    out = tmp_path / "r"
    r = invoke("pretrain", "--data", corpus, "--out", out, *TINY, "--set", "eval_batches=0")
    assert_one_line_error(r, "--set eval_batches=0 must be at least 1")
    assert not out.exists()


# ---- nothing silently clamped or ignored ----------------------------------------------------------


def test_profile_shots_beyond_the_task_is_refused(tiny_ckpt, tmp_path):
    items = [{"context": f"q{i}", "choices": ["x", "y"], "label": 0} for i in range(9)]
    task = write_jsonl(tmp_path / "t.jsonl", items)
    out = tmp_path / "p.json"
    assert_one_line_error(
        invoke("profile", tiny_ckpt, "--examples", task, "--shots", "100", "--out", out),
        "--shots 100 is more than the 9 items",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--micro-batch-size", "0"], "--micro-batch-size 0 (setting micro_batch_size) must be at least 1"),
        (["--stop-after", "0"], "--stop-after 0 (setting stop_after) must be at least 1"),
        (["--set", "save_every=-1"], "--save-every -1 (setting save_every) must be at least 0"),
        (["--set", "keep_last=0"], "--set keep_last=0 must be at least 1"),
        (["--lr", "0"], "--lr 0.0 (setting lr) must be more than 0"),
        (["--set", "valid_share=0"], "valid_share=0"),
    ],
)
def test_pretrain_options_out_of_range_are_refused(corpus, tmp_path, args, needle):
    out = tmp_path / "r"
    assert_one_line_error(invoke("pretrain", "--data", corpus, "--out", out, *TINY, *args), needle)
    assert not out.exists()


def test_eval_max_length_above_the_context_is_refused(tiny_ckpt, tmp_path):
    task = write_jsonl(tmp_path / "t.jsonl", [{"context": "a", "choices": ["x", "y"], "label": 0}])
    assert_one_line_error(
        invoke("eval", tiny_ckpt, "--task", task, "--max-length", "4096"),
        "--max-length 4096",
        "max_position_embeddings 512",
    )


# ---- messages that say what is wrong ---------------------------------------------------------------


def test_messages_say_what_is_wrong(tiny_ckpt, corpus, tmp_path):
    r = invoke("extract", tiny_ckpt, "--keep", "150%", "--method", "random", "--out", tmp_path / "s")
    assert_one_line_error(r, "--keep 150% is more than 100%")
    r = invoke("pretrain", "--data", corpus, "--out", tmp_path / "r", *TINY, "--steps", "0")
    assert_one_line_error(r, "--steps 0 (setting steps) must be at least 1")
    letters = write_jsonl(tmp_path / "z.jsonl", [{"id": "z", "context": "a", "choices": list("wxyz"), "label": "Z"}])
    assert_one_line_error(invoke("eval", tiny_ckpt, "--task", letters), "label 'Z' is letter 26", "4 choices")
    floats = write_jsonl(tmp_path / "f.jsonl", [{"context": "a", "choices": ["x", "y"], "label": 1.5}])
    assert_one_line_error(invoke("eval", tiny_ckpt, "--task", floats), "label 1.5 is a float")
    assert not (tmp_path / "s").exists() and not (tmp_path / "r").exists()


def test_an_integral_float_label_is_an_index(tmp_path):
    from emo_slice.data.sources import load_mc_task

    task = write_jsonl(tmp_path / "f.jsonl", [{"context": "a", "choices": ["x", "y"], "label": 1.0}])
    assert load_mc_task(task)[0].label == 1


# ---- a one-document corpus is not its own validation set --------------------------------------------


def test_validation_is_never_a_training_document(tmp_path):
    from emo_slice.train.corpus import split_validation

    doc = "one single long document " * 40
    train, valid = split_validation([doc], 0.02, "d.txt")
    assert train[0] + valid[0] == doc and train[0] and valid[0]  # the tail is held out, not trained on
    docs = ["first document", "second document"]  # too few for a 2% share to pick any
    train, valid = split_validation(docs, 0.02, "d.jsonl")
    assert valid == ["second document"] and train == ["first document"]
    with pytest.raises(EmoSliceError, match="--valid-data"):
        split_validation(["word "], 0.02, "d.txt")  # nothing but a space to hold out
    with pytest.raises(EmoSliceError, match="--valid-data"):
        split_validation(docs, 0.0, "d.jsonl")
