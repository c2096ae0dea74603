"""Command-line mistakes and refused outputs: one `error: ...` line on stderr, exit 2, nothing written."""

import json
import shutil

import pytest
from conftest import assert_one_line_error, invoke, run_cli


@pytest.mark.parametrize(
    "args,needles",
    [
        (["extract", "m", "--kep", "3", "--out", "o"], ["No such option: --kep", "--keep", "emo-slice extract --help"]),
        (["eval"], ["Missing argument", "emo-slice eval --help"]),
        (["profile", "m", "--examples", "e", "--method", "bogus"], ["--method", "'bogus' is not one of", "mean-prob"]),
        (["eval", "m", "--task", "t", "--batch-size", "many"], ["--batch-size"]),
        (["pretrain", "--out", "r", "--router", "moe"], ["--router", "'moe'"]),
        (["quickstart", "--size", "huge", "--dry-run"], ["--size", "tiny"]),
        (["frobnicate"], ["No such command 'frobnicate'"]),
    ],
)
def test_usage_mistakes_are_one_line(args, needles):
    assert_one_line_error(invoke(*args), *needles)


def test_usage_mistake_through_the_real_entry_point(tmp_path):
    """`python -m emo_slice` (what the console script and torchrun run): the same line, no rich box."""
    proc = run_cli("extract", tmp_path / "m", "--kep", "3", "--out", tmp_path / "o")
    line = assert_one_line_error(proc, "No such option: --kep")
    assert not proc.stdout and line.count("error:") == 1
    assert_one_line_error(run_cli("info"), "Missing argument")


def test_show_config_checks_what_it_prints(tmp_path):
    out = tmp_path / "run"
    assert_one_line_error(invoke("pretrain", "--out", out, "--show-config", "--set", "router=banana"), "'banana'")
    assert_one_line_error(
        invoke("pretrain", "--out", out, "--preset", "tiny", "--show-config", "--set", "pool_min=1"), "pool_min"
    )
    assert_one_line_error(invoke("pretrain", "--out", out, "--show-config", "--set", "seq_len=0"), "seq_len")
    assert_one_line_error(
        invoke("pretrain", "--out", out, "--show-config", "--batch-size", "6", "--micro-batch-size", "4"),
        "--batch-size 6",
    )
    ok = invoke("pretrain", "--out", out, "--preset", "tiny", "--show-config", "--set", "lr=1e-3", "--lr", "0.5")
    assert ok.returncode == 0, ok.stderr
    cfg = json.loads(ok.stdout)
    assert cfg["lr"] == 1e-3 and cfg["preset"] == "tiny"  # --set applies after the explicit options
    assert not out.exists()  # --show-config writes nothing


def test_show_config_on_resume_shows_the_runs_configuration(tmp_path):
    from emo_slice.train.config import train_preset

    out = tmp_path / "run"
    out.mkdir()
    saved = train_preset("tiny", lr=0.0123, steps=77, stop_after=10)
    (out / "train_config.json").write_text(json.dumps(saved.to_dict()))
    proc = invoke("pretrain", "--out", out, "--resume", "--show-config", "--steps", "80")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    assert cfg["lr"] == 0.0123 and cfg["steps"] == 80 and cfg["resume"] and cfg["stop_after"] is None


def _task(tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_text(
        "".join(json.dumps({"context": f"q{i}", "choices": ["a", "b"], "label": i % 2}) + "\n" for i in range(3))
    )
    return path


def test_existing_outputs_refused_before_any_work(fixtures, tmp_path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(fixtures / "emo-tiny", model)
    config = (model / "config.json").read_text()
    task, taken = _task(tmp_path), tmp_path / "taken.json"
    taken.write_text("keep me")
    import emo_slice.eval.harness as harness

    monkeypatch.setattr(harness, "Runner", lambda *a, **k: pytest.fail("a model ran before the outputs were checked"))
    for args, needle in [
        (["eval", model, "--task", task, "--out", taken], "--out"),
        (["eval", model, "--task", task, "--predictions", taken], "--predictions"),
        (["eval", model, "--task", task, "--out", model / "config.json", "--overwrite"], "inside the input"),
        (
            [
                "eval",
                model,
                "--task",
                task,
                "--against",
                fixtures / "emo-tiny",
                "--out",
                fixtures / "emo-tiny" / "r.json",
            ],
            "inside the input",
        ),
        (["profile", model, "--examples", task, "--out", taken], "--out"),
        (["profile", model, "--examples", task, "--out", model / "config.json", "--overwrite"], "inside the input"),
        (["extract", model, "--keep", "4", "--method", "random", "--out", model / "sub"], "inside the input"),
    ]:
        assert_one_line_error(invoke(*args), needle, "--overwrite" if needle in ("--out", "--predictions") else "")
    assert taken.read_text() == "keep me" and (model / "config.json").read_text() == config
    assert not (fixtures / "emo-tiny" / "r.json").exists() and not (model / "sub").exists()


def test_existing_outputs_replaced_with_overwrite(fixtures, tmp_path):
    task, out = _task(tmp_path), tmp_path / "out.json"
    out.write_text("old")  # not something emo-slice wrote: --overwrite leaves it
    args = ["profile", fixtures / "emo-tiny", "--examples", task, "--shots", 1, "--out", out, "--json"]
    assert_one_line_error(invoke(*args, "--overwrite"), "not an emo-slice profile")
    assert out.read_text() == "old"
    out.unlink()
    for extra in ([], ["--overwrite"]):  # the second run replaces the profile the first wrote
        proc = invoke(*args, *extra)
        assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["format"] == "emo-slice-profile"
    summary = json.loads(proc.stdout)
    assert summary["profile"] == str(out) and len(summary["concentration"]) == summary["layers"] == 2
    results, preds = tmp_path / "r.json", tmp_path / "preds.jsonl"
    for extra in ([], ["--overwrite"]):
        proc = invoke("eval", fixtures / "emo-tiny", "--task", task, "--out", results, "--predictions", preds, *extra)
        assert proc.returncode == 0, proc.stderr
    assert json.loads(results.read_text())["results"]["task"]["n_items"] == 3
    assert len(preds.read_text().splitlines()) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
