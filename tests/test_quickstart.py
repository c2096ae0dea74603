"""The quickstart pipeline at tiny size (seconds): every step's output is there and right."""

import json
import shlex
import subprocess
import sys

import pytest
import torch
import typer.main
from conftest import assert_one_line_error, invoke, run_cli

import emo_slice
from emo_slice import quickstart
from emo_slice.cli import app
from emo_slice.io.checkpoint import Checkpoint


@pytest.mark.slow
def test_quickstart_tiny(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "emo_slice", "quickstart", "--out", str(out), "--size", "tiny"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # every step was echoed as the emo-slice command a user can rerun
    for args in quickstart.steps(out, "tiny"):
        assert args[0] in proc.stdout
    assert proc.stdout.count("$ emo-slice ") == 5

    # 1. the corpus: four domains, tasks and per-domain held-out documents
    data = out / "data"
    domains = {json.loads(l)["domain"] for l in open(data / "train.jsonl")}
    assert domains == {"code", "docs", "unicode", "arithmetic"}
    task = [json.loads(l) for l in open(data / "tasks" / "code.jsonl")]
    assert task and all(len(t["choices"]) == 4 and 0 <= t["label"] < 4 for t in task)
    assert all(json.loads(l)["domain"] == "code" for l in open(data / "valid" / "code.jsonl"))

    # 2. pretraining wrote a loadable EMO checkpoint and a log whose loss fell
    full = out / "emo" / "final"
    log = [json.loads(l) for l in open(out / "emo" / "log.jsonl")]
    losses = [r["loss"] for r in log if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    model = emo_slice.load_model(full)

    # 3. the profile covers every layer and routed expert
    profile = json.loads((out / "code.profile.json").read_text())
    assert len(profile["layers"]) == model.config.num_hidden_layers
    assert all(len(l["scores"]["mean-prob"]) == model.config.num_experts - 1 for l in profile["layers"])

    # 4. the slice keeps 25% of the experts, the best ones by mean probability, shared last
    sliced = out / "emo-code-25"
    manifest = json.loads((sliced / "slice.json").read_text())
    cfg = Checkpoint(sliced).config
    assert cfg.num_experts == 2 and cfg.num_experts_per_tok == 2
    for layer, kept in zip(profile["layers"], manifest["kept_experts"]):
        scores = layer["scores"]["mean-prob"]
        assert kept[-1] == model.config.num_experts - 1
        assert kept[:-1] == [max(range(len(scores)), key=lambda e: (scores[e], -e))]
    small = emo_slice.load_model(sliced)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())

    # 5. the eval compares slice and full model on the same items and documents
    res = json.loads((out / "eval-code.json").read_text())
    assert set(res["results"]) == {"code", "lm:code"} == set(res["against_results"])
    assert res["results"]["code"]["n_items"] == res["against_results"]["code"]["n_items"] == 8
    ids = torch.tensor([list(b"def f(x):\n    return x\n")])
    assert torch.isfinite(small(ids)).all()


def test_quickstart_refuses_a_used_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    assert_one_line_error(invoke("quickstart", "--out", tmp_path), "--overwrite")
    # --overwrite empties a quickstart folder only, never a folder of other files
    assert_one_line_error(invoke("quickstart", "--out", tmp_path, "--overwrite"), "'keep.txt'", "did not write")
    assert (tmp_path / "keep.txt").read_text() == "x"
    (tmp_path / "keep.txt").unlink()
    (tmp_path / "data").mkdir()
    (tmp_path / "code.profile.json").write_text("{}")
    assert quickstart.prepare_out(tmp_path, overwrite=True) == tmp_path and not tmp_path.exists()


def test_dry_run_prints_one_pasteable_line_per_command(tmp_path):
    """Unwrapped even when piped (here: a subprocess with a pipe and an 80-column terminal)."""
    out = tmp_path / "a folder with a long name, spaces and 'quotes'" / ("deep" * 20)
    proc = run_cli(
        "quickstart", "--out", out, "--dry-run", "--domain", "docs", "--keep", "12.5%", env_extra={"COLUMNS": "80"}
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = quickstart.steps(out, "small", "docs", "12.5%")
    assert len(lines) == len(steps) == 5 and max(map(len, lines)) > 200
    group = typer.main.get_command(app)
    for line, args in zip(lines, steps):
        words = shlex.split(line)
        assert words == ["emo-slice", *args]
        flags = {o for p in group.commands[words[1]].params for o in (*p.opts, *p.secondary_opts)}
        assert {w for w in words if w.startswith("--")} <= flags, line
    assert not out.exists()
