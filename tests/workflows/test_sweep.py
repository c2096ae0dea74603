"""`emo-slice sweep`: every row equals a separate extract + eval on the same items; the random control is seeded."""

import json
import statistics
import sys

import pytest
from conftest import assert_one_line_error, invoke

from emo_slice.data.sources import Task
from emo_slice.data.tasks import load_items, task_of_items
from emo_slice.eval.settings import EvalSettings
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.slicing.select import plan_slice
from emo_slice.workflows import scoring, sweep


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sweepdata")
    task = write_jsonl(
        d / "sums.jsonl",
        [
            {"id": f"s{i}", "context": f"{i} + {i} =", "choices": [f" {2 * i}", f" {i}", " 7"], "label": 0}
            for i in range(6)
        ],
    )
    lm = write_jsonl(d / "docs.jsonl", [{"text": f"def f{i}(x):\n    return x * {i}\n" * 3} for i in range(3)])
    (d / "calib.txt").write_text("for i in range(10):\n    print(i * i)\n" * 4)
    return task, lm, d / "calib.txt"


@pytest.mark.slow
def test_sweep_rows_equal_separate_extract_and_eval(tiny_ckpt, data, tmp_path, monkeypatch):
    from emo_slice.eval.harness import simple_evaluate
    from emo_slice.workflows.slice import make_slice

    task, lm, calib = data
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # no matplotlib: one line says how to get the PNG
    r = invoke(
        "sweep",
        tiny_ckpt,
        "--examples",
        calib,
        "--task",
        task,
        "--lm",
        lm,
        "--keep",
        "3,50%",
        "--controls",
        "1",
        "--seed",
        "5",
        "--out",
        tmp_path / "r.json",
        "--metric",
        "bits_per_byte",
        "--metric",
        "bits_per_byte_gold",
    )
    assert r.returncode == 0, r.stderr
    assert "pip install 'emo-slice[plot]'" in r.stderr and not (tmp_path / "r.png").exists()
    res = json.loads((tmp_path / "r.json").read_text())["sweeps"][0]
    assert res["keeps"] == [3, 4] and [(x["keep"], x["kind"], x["seed"]) for x in res["rows"]] == [
        (k, kind, s) for k in (3, 4) for kind, s in (("profile", None), ("random", 5))
    ]
    assert res["held_out"] == [] and res["full"]["bytes"] == Checkpoint(tiny_ckpt).total_bytes
    full_bytes = res["full"]["bytes"]
    ctrl = [x for x in res["rows"] if x["kind"] == "random" and x["keep"] == 4]
    # the control: experts drawn per layer by the seeded generator, different per seed, the same on every call
    ckpt = Checkpoint(tiny_ckpt)
    assert ctrl[0]["kept_experts"] == plan_slice(ckpt, 4, method="random", seed=5).kept
    assert ctrl[0]["kept_experts"] != plan_slice(ckpt, 4, method="random", seed=6).kept
    assert res["controls"] == {"n": 1, "seeds": [5], "method": "random"}
    # separate runs: extract (the sweep's profile input; and a random control) + eval against the full model
    # (the control's slice is rescaled by the same profile's routing mass as the profile's own slice)
    for row, kw in ((res["rows"][2], {}), (ctrl[0], {"method": "random", "seed": 5})):
        kw["examples"] = str(calib)
        m = make_slice(tiny_ckpt, tmp_path / f"s{row['seed']}", keep=4, **kw)
        assert m["kept_experts"] == row["kept_experts"]
        sep = simple_evaluate(
            str(tmp_path / f"s{row['seed']}"), against=str(tiny_ckpt), tasks=[str(task)], lm=[str(lm)]
        )
        assert row["results"] == sep["results"] and res["full"]["results"] == sep["against_results"]
        assert row["kept"] == {t: {m: c["kept"] for m, c in cmp.items()} for t, cmp in sep["comparison"].items()}
        assert (
            row["bytes"] == sep["models"]["model"]["weight_bytes"]
            and row["share_of_bytes"] == row["bytes"] / full_bytes
        )
    from emo_slice.cli.display import human

    # the table: one row per K and the full model, the chosen metrics with the share kept
    for needle in ("(33%)", "(44%)", "(all)", "bits/byte_gold", human(full_bytes), "random"):
        assert needle in r.stdout, needle


def test_held_out_tasks_drop_the_calibration_items(tmp_path, data):
    """A task that is the calibration's source is handed over as a Task object of its other items (in memory, read
    with the settings' few-shot draw and limit); any other task stays a spec, read as `eval` reads it."""
    task, _, _ = data
    other = write_jsonl(tmp_path / "other.jsonl", [{"context": "a", "choices": [" b", " c"], "label": 1}] * 2)
    calib = [{"kind": "multiple-choice", "source": str(task), "ids": ["s1", "s4"]}]
    tasks, records = scoring.held_out_tasks([str(task), str(other)], calib, EvalSettings())
    assert isinstance(tasks[0], Task) and tasks[1] == str(other)
    assert [it.id for it in tasks[0].items] == ["s0", "s2", "s3", "s5"] and tasks[0].name == "sums"
    assert tasks[0].spec == str(task) and tasks[0].demos == []
    assert [f.name for f in tmp_path.rglob("*")] == ["other.jsonl"]  # nothing written to hand the items over
    assert records == [
        {
            "task": str(task),
            "calibration_ids": ["s1", "s4"],
            "items": 6,
            "held_out": 4,
            "held_out_hash": records[0]["held_out_hash"],
        }
    ]
    two_shot, _ = scoring.held_out_tasks([str(task)], calib, EvalSettings(shots=2, seed=3, limit=1))
    expected = task_of_items(
        str(task), "plain", [it for it in load_items(str(task))[0] if it.id not in ("s1", "s4")], 2, 3, 1
    )
    assert two_shot[0] == expected and len(expected.demos) == 2 and len(expected.items) == 1
    # calibration on another source: the specs pass through untouched
    assert scoring.held_out_tasks([str(other)], calib, EvalSettings()) == ([str(other)], [])


@pytest.mark.slow  # importing matplotlib takes seconds
def test_plot_marks_full_model_and_controls(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [
        {"kind": kind, "keep": k, "share_of_bytes": b, "results": {"lm:x": {"bits_per_byte": v}}}
        for kind, k, b, v in (
            ("profile", 2, 0.3, 3.5),
            ("random", 2, 0.3, 4.5),
            ("random", 2, 0.3, 4.1),
            ("profile", 4, 0.6, 3.4),
            ("random", 4, 0.6, 3.6),
        )
    ]
    data = {"sweeps": [{"label": "emo", "rows": rows, "full": {"results": {"lm:x": {"bits_per_byte": 3.3}}}}]}
    assert sweep.write_plot(data, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--keep", "3,99"], ["--keep 99", "more than the 9"]),
        (["--keep", ","], ["--keep lists no K"]),
        (["--keep", "3", "--controls", "-1"], ["--controls -1"]),
        (["--keep", "3", "--method", "random"], ["--method random is the control arm"]),
    ],
)
def test_bad_sweeps_are_refused(tiny_ckpt, data, args, needles):
    task, _, calib = data
    assert_one_line_error(invoke("sweep", tiny_ckpt, "--examples", calib, "--task", task, *args), *needles)


def test_sweep_refuses_outputs_before_any_work(tiny_ckpt, data, tmp_path):
    task, _, calib = data
    (tmp_path / "r.json").write_text("{}")
    r = invoke("sweep", tiny_ckpt, "--examples", calib, "--task", task, "--keep", "3", "--out", tmp_path / "r.json")
    assert_one_line_error(r, "--overwrite")
    r = invoke("sweep", tiny_ckpt, tiny_ckpt, "--profile", tmp_path / "p.json", "--task", task, "--keep", "3")
    assert_one_line_error(r, "--profile belongs to one model")
    r = invoke("sweep", tiny_ckpt, "--task", task, "--keep", "3", "--out", tiny_ckpt / "r.json")
    assert_one_line_error(r, "inside the input")
    assert (tmp_path / "r.json").read_text() == "{}"


def test_spread_is_the_sample_mean_sd_min_and_max():
    """Against the statistics module: the sample standard deviation (n - 1), numbers only, None below two."""
    xs = [0.91, 0.953, None, 0.87, "N/A", 0.999]
    nums = [0.91, 0.953, 0.87, 0.999]
    st = sweep.spread(xs)
    assert st["n"] == 4 and st["min"] == 0.87 and st["max"] == 0.999
    assert st["mean"] == pytest.approx(statistics.mean(nums), abs=1e-15)
    assert st["sd"] == pytest.approx(statistics.stdev(nums), abs=1e-15)
    assert sweep.spread([0.5]) == {"n": 1, "mean": 0.5, "sd": None, "min": 0.5, "max": 0.5}
    assert sweep.spread([None, True]) == {"n": 0, "mean": None, "sd": None, "min": None, "max": None}


@pytest.fixture(scope="module")
def three_controls(tiny_ckpt, data):
    """A sweep of the tiny model with three random draws per K (bits per byte on the code documents)."""
    _, lm, calib = data
    settings = sweep.ProfileSettings(examples=str(calib))
    return sweep.run_sweep(tiny_ckpt, keeps="3,5", lm=[str(lm)], settings=settings, controls=3, seed=7)


def test_control_statistics_are_the_draws_mean_sd_min_and_max(three_controls, tiny_ckpt, data):
    res = three_controls
    assert res["controls"] == {"n": 3, "seeds": [7, 8, 9], "method": "random"}
    assert [(c["keep"], c["n"], c["seeds"]) for c in res["control_stats"]] == [(3, 3, [7, 8, 9]), (5, 3, [7, 8, 9])]
    for c in res["control_stats"]:
        draws = [r for r in res["rows"] if r["kind"] == "random" and r["keep"] == c["keep"]]
        for part in ("results", "kept"):
            for task, metrics in c[part].items():
                assert metrics, task
                for m, st in metrics.items():
                    xs = [r[part][task][m] for r in draws]
                    assert st["mean"] == pytest.approx(statistics.mean(xs), rel=1e-12)
                    assert st["sd"] == pytest.approx(statistics.stdev(xs), rel=1e-9)
                    assert (st["min"], st["max"]) == (min(xs), max(xs))
        kept = c["kept"]["lm:docs"]["bits_per_byte"]
        assert kept["sd"] > 0  # three different draws score differently
    # seeded: the same draws, the same scores, on every call
    _, lm, calib = data
    again = sweep.run_sweep(
        tiny_ckpt, keeps="3", lm=[str(lm)], settings=sweep.ProfileSettings(examples=str(calib)), controls=3, seed=7
    )
    first = [r for r in res["rows"] if r["keep"] == 3]
    assert [(r["kept_experts"], r["results"]) for r in again["rows"]] == [
        (r["kept_experts"], r["results"]) for r in first
    ]
    assert again["control_stats"][0] == res["control_stats"][0]


@pytest.mark.parametrize("width", [80, 120])
def test_sweep_table_keeps_every_figure_whole(three_controls, width):
    """In an 80-column terminal (and a log file) no cell is cut short: every figure of the table is printed whole;
    a wide terminal adds tokens/s."""
    from rich.console import Console

    from emo_slice.cli.display import _fmt
    from emo_slice.cli.sweep_display import sweep_table

    data = {"sweeps": [three_controls, {**three_controls, "label": "standard"}]}
    console = Console(width=width, record=True, color_system=None)
    console.print(sweep_table(data, None, console.width))
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= width
    for c in three_controls["control_stats"]:
        st = c["kept"]["lm:docs"]["bits_per_byte"]
        assert f"{st['mean']:.1%}" in text and f"±{st['sd'] * 100:.1f}" in text
    for r in three_controls["rows"]:
        if r["kind"] == "profile":
            assert _fmt("bits_per_byte", r["results"]["lm:docs"]["bits_per_byte"]) in text
            assert f"({r['kept']['lm:docs']['bits_per_byte']:.1%})" in text
    assert "mean, ± sd of 3 draws" in " ".join(text.split())
    assert ("tok/s" in text) == (width >= 110)
