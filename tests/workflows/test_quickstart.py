"""The quickstart pipeline at tiny size (seconds): every step's output is there and right."""

import json
import os
import shlex
import subprocess
import sys

import pytest
import typer.main
from conftest import assert_one_line_error, invoke, run_cli

import emo_slice
from emo_slice.cli import app
from emo_slice.workflows import quickstart


@pytest.mark.slow
def test_quickstart_tiny(tmp_path):
    out = tmp_path / "qs"
    proc = subprocess.run(
        [sys.executable, "-m", "emo_slice", "quickstart", "--out", str(out), "--size", "tiny"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # every step was echoed as the emo-slice command a user can rerun; the two pretrain runs at the same time
    steps = quickstart.steps(out, "tiny")
    for args in steps:
        assert shlex.join(args) in proc.stdout
    assert (
        proc.stdout.count("$ emo-slice ") == 2 + quickstart.map_extra()
        and proc.stdout.count("$ OMP_NUM_THREADS=1 emo-slice pretrain") == 2
    )

    # 1. the corpus: four domains, tasks and per-domain held-out documents
    data = out / "data"
    domains = {json.loads(l)["domain"] for l in open(data / "train.jsonl")}
    assert domains == {"code", "docs", "unicode", "arithmetic"}
    assert all(json.loads(l)["domain"] == "code" for l in open(data / "valid" / "code.jsonl"))

    # 2. both models trained the same way but for the router, each a loadable checkpoint whose loss fell
    for router in quickstart.ROUTERS:
        cfg = json.loads((out / router / "train_config.json").read_text())
        assert cfg["router"] == router
        log = [json.loads(l) for l in open(out / router / "log.jsonl")]
        losses = [r["loss"] for r in log if r["kind"] == "train"]
        assert losses[-1] < losses[0]
        emo_slice.load_model(out / router / "final")

    # 3. one sweep of both models: each K (12.5% and 25% are both 2 of 9 at this size) and two random controls,
    # scored in bits per byte on held-out code documents against its own full model
    res = json.loads((out / "sweep-code.json").read_text())
    assert [s["model"] for s in res["sweeps"]] == [str((out / r / "final").resolve()) for r in quickstart.ROUTERS]
    for s in res["sweeps"]:
        assert s["keeps"] == [2, 4] and s["profile"]["inputs"]["shots"] == 5
        assert [(r["keep"], r["kind"], r["seed"]) for r in s["rows"]] == [
            (k, kind, seed) for k in (2, 4) for kind, seed in (("profile", None), ("random", 0), ("random", 1))
        ]
        assert [(c["keep"], c["n"]) for c in s["control_stats"]] == [(2, 2), (4, 2)]
        assert set(s["full"]["results"]) == {"lm:code"} and s["full"]["bytes"] > s["rows"][-1]["bytes"]
        assert all(kept[-1] == 8 for r in s["rows"] for kept in r["kept_experts"])  # the shared expert, last
    table = proc.stdout[proc.stdout.index("Sweep on lm:code:") :]
    assert "bits/byte" in table and "acc" not in table  # chance-level accuracies are not shown
    assert " emo " in table and " standard " in table  # both models, side by side
    assert (out / "sweep-code.png").exists() or "pip install 'emo-slice[plot]'" in proc.stderr

    # 4. both models mapped on the same held-out documents of every domain
    if quickstart.map_extra():
        summary = json.loads((out / "map" / "summary.json").read_text())
        assert [m["label"] for m in summary["models"]] == list(quickstart.ROUTERS)
        assert sorted(summary["documents"]["domains"]) == sorted(domains)
        assert (out / "map" / "index.html").is_file() and (out / "map" / "usage_map.png").is_file()


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
    """Unwrapped even when piped (here: a subprocess with a pipe and an 80-column terminal); the pretrain
    commands run in the background, one thread each, then `wait`."""
    out = tmp_path / "a folder with a long name, spaces and 'quotes'" / ("deep" * 20)
    proc = run_cli(
        "quickstart", "--out", out, "--dry-run", "--domain", "docs", "--keep", "12.5%", env_extra={"COLUMNS": "80"}
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    steps = quickstart.steps(out, "small", "docs", "12.5%")
    assert len(steps) == 5 and len(lines) == 6 and lines[3] == "wait" and max(map(len, lines)) > 200
    group = typer.main.get_command(app)
    threads = f"OMP_NUM_THREADS={quickstart.threads_each(2)}"
    for line, args in zip(lines[:3] + lines[4:], steps):
        words = shlex.split(line)
        if args[0] == "pretrain":
            assert words[0] == threads and words[-1] == "&"
            words = words[1:-1]
        assert words == ["emo-slice", *args]
        flags = {o for p in group.commands[words[1]].params for o in (*p.opts, *p.secondary_opts)}
        assert {w for w in words if w.startswith("--")} <= flags, line
    assert [a[a.index("--router") + 1] for a in steps if a[0] == "pretrain"] == ["emo", "standard"]
    assert not out.exists()


def test_quickstart_keep_is_validated_before_anything_runs(tmp_path):
    assert quickstart.check_keep("small", "12.5%,25%,50%") == [4, 8, 16]
    assert_one_line_error(invoke("quickstart", "--out", tmp_path / "q", "--keep", "10,99"), "--keep 99")
    assert not (tmp_path / "q").exists()
