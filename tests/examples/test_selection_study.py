"""examples/selection_study.py: its rows are sweep's rows (the same slices, the same scores), its random spread is
the draws' mean and sample standard deviation, and bad input is one line."""

import json
import statistics
from pathlib import Path

import pytest
from conftest import load_example

from emo_slice.slicing.profile_settings import ProfileSettings
from emo_slice.workflows import sweep


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path):
    d = tmp_path / "data"
    items = [{"id": f"q{i}", "context": f"x = {i} +", "choices": [f" {i}", " 1", " 2"], "label": 0} for i in range(8)]
    _jsonl(d / "tasks" / "code.jsonl", items)
    _jsonl(d / "valid" / "code.jsonl", [{"text": f"def f{i}(a):\n    return a + {i}\n" * 2} for i in range(3)])
    _jsonl(d / "valid" / "docs.jsonl", [{"text": f"The value {i} is kept in the list.\n" * 2} for i in range(3)])
    return d


@pytest.mark.slow
def test_study_rows_are_the_sweeps_and_the_spread_is_the_draws(tiny_ckpt, data, tmp_path, capsys):
    study = load_example("selection_study")
    out = tmp_path / "study.json"
    # K = 3 <= top-k: with --rescale auto the study's slices are rescaled as sweep's default rescales them
    args = ["--models", str(tiny_ckpt), "--data", str(data), "--keep", "3", "--draws", "3", "--rescale", "auto"]
    assert study.main([*args, "--methods", "mean-prob,greedy", "--out", str(out)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = json.loads(out.read_text())["models"][0]["rows"]
    # the same slices and scores as `emo-slice sweep` on the same calibration example and documents
    calib = ProfileSettings(examples=str(data / "tasks" / "code.jsonl"), shots=5, seed=0)
    lm = [str(data / "valid" / f"{d}.jsonl") for d in ("code", "docs")]
    ref = sweep.run_sweep(tiny_ckpt, keeps="3", lm=lm, settings=calib, controls=3, seed=0)
    by_kind = {(r["kind"], r["seed"]): r for r in ref["rows"]}
    mine = {(r["method"], r["seed"]): r for r in rows}
    for task in ("lm:code", "lm:docs"):
        assert mine[("mean-prob", None)]["kept"][task] == by_kind[("profile", None)]["kept"][task]["bits_per_byte"]
        for s in range(3):
            assert mine[("random", s)]["kept"][task] == by_kind[("random", s)]["kept"][task]["bits_per_byte"]
        draws = [mine[("random", s)]["kept"][task] for s in range(3)]
        cell = line["figures"][Path(tiny_ckpt).name][f"K=3 {task[3:]}"]["random"]
        assert cell["mean"] == round(statistics.mean(draws), 4) and cell["sd"] == round(statistics.stdev(draws), 4)
        assert (cell["min"], cell["max"]) == (round(min(draws), 4), round(max(draws), 4))
    assert mine[("greedy", None)]["kept"]["lm:code"] > 0
    # the routing the kept experts held is a share: every routed expert holds all of it
    assert all(0 < r["slots"] <= 1 and 0 < r["mass"] <= 1 + 1e-9 for r in rows)


def test_bad_study_input_is_one_line(tmp_path, capsys):
    study = load_example("selection_study")
    assert study.main(["--models", "m", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --data") and "valid/DOMAIN.jsonl" in err[0]


def test_the_study_never_writes_onto_its_inputs_or_an_existing_file(tiny_ckpt, data, tmp_path, capsys):
    study = load_example("selection_study")
    mine = tmp_path / "mine.json"
    mine.write_text("keep")
    for out in (mine, data / "valid" / "code.jsonl", tiny_ckpt / "study.json"):
        before = out.read_bytes() if out.exists() else None
        assert study.main(["--models", str(tiny_ckpt), "--data", str(data), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --out"), err
        assert (out.read_bytes() if out.exists() else None) == before
    assert not (tiny_ckpt / "study.json").exists()
