"""`emo-slice eval` on a group (mmlu): one table of the group scores, subtasks only with --per-subtask (the
results file keeps them all); other tasks print one table each as before; Winogrande reports no acc_norm.

The MMLU copy is built here in the Hub's `all` layout (`Dataset.save_to_disk`); the scorer is replaced by a
stub whose scores depend on the task and the model, so that every shown number can be checked against the
results file.
"""

from __future__ import annotations

import json

import pytest
from conftest import invoke

from emo_slice.data.sources import MCItem

datasets = pytest.importorskip("datasets")

MMLU = {"question": "What is 2+2?", "subject": "", "choices": ["3", "4", "5", "6"], "answer": 1}


def _mmlu_folder(tmp_path, sizes: dict[str, int]):
    test = [{**MMLU, "subject": s, "question": f"{s} {k}?"} for s, n in sizes.items() for k in range(n)]
    dev = [{**MMLU, "subject": s} for s in sizes]
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list(test), "dev": datasets.Dataset.from_list(dev)})
    dd.save_to_disk(str(tmp_path / "mmlu" / "all"))
    return tmp_path / "mmlu"


@pytest.fixture
def stub_scorer(monkeypatch):
    """evaluate_mc replaced: acc from the task's name and which model of a run (model, against) scores it."""
    from emo_slice.eval import harness
    from emo_slice.eval.scoring import MCResult

    runners: list = []

    def fake_evaluate_mc(runner, items, *, task, **kw):
        if runner not in runners:
            runners.append(runner)
        acc = ((sum(map(ord, task)) + 3 * (runners.index(runner) % 2)) % 7) / 7
        metrics = {"acc,none": acc, "acc_stderr,none": 0.1, "acc_raw": 1 - acc, "n_items": len(items), "truncated": 0}
        return MCResult(metrics, [], 0, len(items))

    monkeypatch.setattr(harness, "evaluate_mc", fake_evaluate_mc)


def _table_rows(stdout: str, title: str) -> list[list[str]]:
    """The body rows (cells, stripped but for the first's indent) of the table whose title line holds `title`."""
    lines = stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if title in ln)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("└"))
    body = [ln for ln in lines[start:end] if ln.startswith("│")]
    cells = [ln.strip("│").split("│") for ln in body]
    return [[c[0][1:].rstrip()] + [x.strip() for x in c[1:]] for c in cells]  # the first cell's indent kept


def test_group_is_one_table_and_subtasks_only_with_the_flag(tmp_path, tiny_ckpt, stub_scorer):
    from emo_slice.data.benchmarks.registry import MMLU_GROUPS, MMLU_SUBJECTS
    from emo_slice.eval.metrics import HIGHER_IS_BETTER

    folder = _mmlu_folder(tmp_path, {s: 1 + (MMLU_SUBJECTS[s] == "stem") for s in MMLU_SUBJECTS})
    task = tmp_path / "plain.jsonl"
    task.write_text(
        "".join(json.dumps({"context": f"Q{i}?", "choices": ["a", "b"], "label": 0}) + "\n" for i in range(3))
    )
    runs = {}
    for flag in ([], ["--per-subtask"]):
        out = tmp_path / f"r{len(flag)}.json"
        args = ["eval", tiny_ckpt, "--against", tiny_ckpt, "--task", f"mmlu={folder}", "--task", task, "--out", out]
        r = invoke(*args, *flag)
        assert r.returncode == 0, r.stderr
        runs[bool(flag)] = (r.stdout, json.loads(out.read_text()))
    (plain_out, data), (full_out, data_full) = runs[False], runs[True]

    # the results file keeps every subject, whatever is shown
    groups = ["mmlu"] + [f"mmlu_{g}" for g in MMLU_GROUPS]
    assert data["results"] == data_full["results"] and data["comparison"] == data_full["comparison"]
    assert set(data["results"]) == {f"mmlu_{s}" for s in MMLU_SUBJECTS} | set(groups) | {"plain"}

    # tables: the group's, the plain task's, the models' (not 57 + 5 + 1)
    for stdout in (plain_out, full_out):
        assert sum(ln.startswith("┏") for ln in stdout.splitlines()) == 3
        assert "plain: 3 items" in stdout and "mmlu: 76 items" in stdout
    shown = [m for m in HIGHER_IS_BETTER if m in data["results"]["mmlu"]]
    assert shown == ["acc,none", "acc_raw"]
    rows = _table_rows(plain_out, "mmlu: 76 items")
    assert len(rows) == len(groups) * len(shown)
    assert "mmlu_abstract_algebra" not in plain_out and "--per-subtask to show its 57 subtasks" in plain_out
    rows_full = _table_rows(full_out, "mmlu: 76 items")
    assert len(rows_full) == (len(groups) + len(MMLU_SUBJECTS)) * len(shown)

    # each row: task, metric, both models, difference, kept: the results file's numbers
    for body in (rows, rows_full):
        task_name = None
        for cells in body:
            task_name = cells[0].lstrip(" -") or task_name
            c = data["comparison"][task_name][cells[1]]
            assert cells[2:4] == [f"{c['model']:.1%}", f"{c['against']:.1%}"]
            assert cells[4] == f"{(c['model'] - c['against']) * 100:+.1f} pts"

    # per subtask: each subject right under its own group (lm-eval's nesting), groups alphabetical under mmlu
    names = [cells[0] for cells in rows_full if cells[0]]
    assert names[0] == "mmlu"
    group_at = [i for i, n in enumerate(names) if n.lstrip(" -") in groups]
    assert [names[i].lstrip(" -") for i in group_at] == ["mmlu"] + sorted(groups[1:])
    current = None
    for n in names[1:]:
        name = n.lstrip(" -")
        if name in groups:
            current = name
            assert n == " - " + name
        else:
            assert n == "   - " + name and current == "mmlu_" + MMLU_SUBJECTS[name[len("mmlu_") :]]

    # the plain task prints as before: one row per metric
    plain_rows = _table_rows(plain_out, "plain: 3 items")
    assert [r[0] for r in plain_rows] == shown


def test_eval_tables_group_alone_and_per_pool(tmp_path, tiny_ckpt, stub_scorer):
    """--task mmlu_stem: one table for mmlu_stem (no inner groups); eval_tables without --against."""
    from emo_slice.cli.display import eval_tables
    from emo_slice.data.benchmarks.registry import MMLU_SUBJECTS
    from emo_slice.eval.harness import simple_evaluate

    stem = [s for s, g in MMLU_SUBJECTS.items() if g == "stem"]
    folder = _mmlu_folder(tmp_path, {s: 1 for s in stem})
    data = simple_evaluate(str(tiny_ckpt), tasks=[f"mmlu_stem={folder}"])
    assert set(data["results"]) == {f"mmlu_{s}" for s in stem} | {"mmlu_stem"}
    compact, full = eval_tables(data), eval_tables(data, per_subtask=True)
    assert len(compact) == len(full) == 2  # the group, the models
    assert compact[0].row_count == 2 and full[0].row_count == 2 * (1 + len(stem))
    assert [c.header for c in compact[0].columns] == ["task", "metric", "tiny"]


def test_winogrande_reports_no_acc_norm(tmp_path, tiny_ckpt):
    """Per-choice contexts (Winogrande's partial scoring): acc and its stderr only, as lm-eval's winogrande;
    a task without them keeps acc_norm; every other metric is mc_metrics' own."""
    from emo_slice.eval.harness import simple_evaluate

    rows = [
        {"sentence": f"Ann helped Bo {i} because _ was kind.", "option1": "Ann", "option2": "Bo", "answer": "1"}
        for i in range(3)
    ]
    wino = tmp_path / "w"
    datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s in ("validation", "train")}).save_to_disk(str(wino))
    task = tmp_path / "plain.jsonl"
    task.write_text(
        "".join(json.dumps({"context": f"Q{i}?", "choices": ["a", "bb"], "label": 0}) + "\n" for i in range(3))
    )
    data = simple_evaluate(str(tiny_ckpt), tasks=[f"winogrande={wino}", str(task)], shots=1, log_samples=True)
    res = data["results"]
    assert {"acc,none", "acc_stderr,none", "acc_raw", "acc_per_char"} <= set(res["winogrande"])
    assert not {"acc_norm,none", "acc_norm_stderr,none"} & set(res["winogrande"])
    assert {"acc_norm,none", "acc_norm_stderr,none"} <= set(res["plain"])
    preds = {s["task"]: s["pred"] for s in data["samples"]}
    assert "acc_norm,none" not in preds["winogrande"] and "acc_norm,none" in preds["plain"]


def test_task_metrics_drops_acc_norm_only_with_contexts():
    from emo_slice.eval.metrics import task_metrics

    metrics = {"acc,none": 0.5, "acc_stderr,none": 0.1, "acc_norm,none": 1.0, "acc_norm_stderr,none": 0.0}
    preds = [{"id": "0", "pred": {"acc,none": 1, "acc_norm,none": 0}}]
    plain = [MCItem("0", "ctx", ["a", "b"], 0)]
    assert task_metrics(metrics, preds, plain) == (metrics, preds)
    wino = [MCItem("0", "", ["rest", "rest"], 0, ["ctx a", "ctx b"], " ")]
    kept, kept_preds = task_metrics(metrics, preds, wino)
    assert kept == {"acc,none": 0.5, "acc_stderr,none": 0.1}
    assert kept_preds == [{"id": "0", "pred": {"acc,none": 1}}]
