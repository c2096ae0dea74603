"""Built-in benchmarks: lm-eval 0.4.13's prompt formats, few-shot draws, Winogrande's partial scoring, MMLU's
groups, the data sources (local folder, hub cache, offline error) and `emo-slice tasks`.

Each dataset is built in the Hub's column shapes with `Dataset.from_dict(...).save_to_disk(...)`; the expected
prompts are written out by hand from lm-eval's task YAMLs (lm_eval/tasks/<name>/...), not computed by the code.
"""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import assert_one_line_error, invoke

from emo_slice.data.benchmarks import aggregate_groups, load_benchmark
from emo_slice.errors import DataError, UsageError

datasets = pytest.importorskip("datasets")


def save(path, **splits) -> str:
    """A DatasetDict with the given splits (each a list of rows) saved at path."""
    dd = datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in splits.items()})
    dd.save_to_disk(str(path))
    return str(path)


def arc_row(i, q, texts, key, labels="ABCDE"):
    return {
        "id": f"arc{i}",
        "question": q,
        "choices": {"text": texts, "label": list(labels[: len(texts)])},
        "answerKey": key,
    }


ARC = arc_row(0, "Which gas do plants absorb?", ["oxygen", "carbon dioxide", "helium"], "B")
HELLA = {
    "ind": 4,
    "activity_label": "Health",
    "ctx_a": "[header] How to stay fit [title] Eat well.",
    "ctx_b": "",
    "ctx": "unused",
    "endings": ["[step] Drink water.", "Sleep  more.", "Run.", "Swim."],
    "source_id": "wikihow~1",
    "split": "val",
    "split_type": "indomain",
    "label": "2",
}
PIQA = {"goal": "How do I open a jar?", "sol1": "Twist the lid.", "sol2": "Eat the lid.", "label": 0}
WINO = {
    "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
    "option1": "Sarah",
    "option2": "Maria",
    "answer": "1",
}
BOOLQ = {"question": "is the sky blue", "passage": "The sky appears blue.", "idx": 7, "label": 1}
OBQA = {
    "id": "7-980",
    "question_stem": "The sun is responsible for",
    "choices": {"text": ["puppies", "plants sprouting", "rain", "snow"], "label": ["A", "B", "C", "D"]},
    "answerKey": "B",
}
SCIQ = {
    "question": "What do mesophiles like?",
    "distractor3": "ice",
    "distractor1": "fire",
    "distractor2": "acid",
    "correct_answer": "moderate heat",
    "support": "  Mesophiles grow best in moderate temperature.",
}
CSQA = {
    "id": "q1",
    "question": " Where would you keep milk? ",
    "question_concept": "milk",
    "choices": {"label": list("ABCDE"), "text": ["fridge", "oven", "shelf", "car", "bed"]},
    "answerKey": "A",
}
MMLU = {"question": " What is 2+2? ", "subject": "abstract_algebra", "choices": ["3", "4", "5", "6"], "answer": 1}
MMLU_DEV = {"question": "What is 1+1?", "subject": "abstract_algebra", "choices": ["1", "2", "3", "4"], "answer": 1}
PRO = {
    "question_id": 70,
    "question": "Which is a prime?",
    "options": ["4", "6", "7", "8", "9", "10", "12", "14", "15", "16"],
    "answer": "C",
    "answer_index": 2,
    "cot_content": "",
    "category": "math",
    "src": "ori_mmlu",
}
MCQ_ARC = "Question: Which gas do plants absorb?\n A. oxygen\n B. carbon dioxide\n C. helium\nAnswer:"

# name, the splits (scored split and, for few-shot, the train/dev split), expected context, choices, gold
CASES = [
    (
        "arc_easy",
        "test",
        ARC,
        "Question: Which gas do plants absorb?\nAnswer:",
        ["oxygen", "carbon dioxide", "helium"],
        1,
    ),
    (
        "arc_challenge",
        "test",
        arc_row(1, "Q?", ["a", "b", "c", "d"], "3", "1234"),
        "Question: Q?\nAnswer:",
        list("abcd"),
        2,
    ),
    ("arc_easy:mc", "test", ARC, MCQ_ARC, ["A", "B", "C"], 1),
    (
        "hellaswag",
        "validation",
        HELLA,
        "Health: How to stay fit. Eat well.",
        [" Drink water.", "Sleep more.", "Run.", "Swim."],
        2,
    ),
    ("piqa", "validation", PIQA, "Question: How do I open a jar?\nAnswer:", ["Twist the lid.", "Eat the lid."], 0),
    (
        "piqa:mc",
        "validation",
        PIQA,
        "Goal: How do I open a jar?\n A. Twist the lid.\n B. Eat the lid.\nAnswer:",
        ["A", "B"],
        0,
    ),
    ("boolq", "validation", BOOLQ, "The sky appears blue.\nQuestion: is the sky blue?\nAnswer:", ["no", "yes"], 1),
    ("openbookqa", "test", OBQA, "The sun is responsible for", ["puppies", "plants sprouting", "rain", "snow"], 1),
    (
        "openbookqa:mc",
        "test",
        OBQA,
        "Question: The sun is responsible for\n A. puppies\n B. plants sprouting\n C. rain\n D. snow\nAnswer:",
        list("ABCD"),
        1,
    ),
    (
        "sciq",
        "test",
        SCIQ,
        "Mesophiles grow best in moderate temperature.\nQuestion: What do mesophiles like?\nAnswer:",
        ["fire", "acid", "ice", "moderate heat"],
        3,
    ),
    (
        "csqa",
        "validation",
        CSQA,
        "Question: Where would you keep milk?\nA. fridge\nB. oven\nC. shelf\nD. car\nE. bed\nAnswer:",
        list("ABCDE"),
        0,
    ),
]


@pytest.mark.parametrize("name,split,row,context,choices,gold", CASES, ids=[c[0] for c in CASES])
def test_prompts_are_lm_evals(tmp_path, name, split, row, context, choices, gold):
    folder = save(tmp_path / "d", **{split: [row]})
    [task] = load_benchmark(f"{name}={folder}")
    [it] = task.items
    assert (it.context, it.choices, it.label, it.target_delimiter) == (context, choices, gold, " ")
    assert task.prompt == "" and it.contexts is None


def test_mmlu_description_and_first_n_fewshot(tmp_path):
    """lm-eval's mmlu: description, then the first k dev rows (sampler first_n) as "... Answer: B\\n\\n"."""
    dev2 = {**MMLU_DEV, "question": "Second?"}
    folder = save(tmp_path / "m" / "abstract_algebra", test=[MMLU], dev=[MMLU_DEV, dev2])
    [task] = load_benchmark(f"mmlu_abstract_algebra={tmp_path / 'm'}", shots=1)
    [it] = task.items
    assert task.prompt == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
    )
    assert (it.context, it.choices, it.label) == ("What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", list("ABCD"), 1)
    [mc] = load_benchmark(f"mmlu_abstract_algebra:mc={tmp_path / 'm'}")
    assert mc.items[0].context == "Question: What is 2+2?\n A. 3\n B. 4\n C. 5\n D. 6\nAnswer:"
    assert folder


def test_mmlu_pro_is_olmes_mc(tmp_path):
    folder = save(tmp_path / "p", test=[PRO, {**PRO, "category": "law"}], validation=[PRO])
    [task] = load_benchmark(f"mmlu_pro_math:mc={folder}")
    [it] = task.items  # the law row is another category's
    lines = "".join(f" {letter}. {o}\n" for letter, o in zip("ABCDEFGHIJ", PRO["options"]))
    assert it.context == "Question: Which is a prime?\n" + lines + "Answer:"
    assert (it.choices, it.label, task.name) == (list("ABCDEFGHIJ"), 2, "mmlu_pro_math:mc")
    assert task.prompt == "The following are multiple choice questions (with answers) about math.\n\n"


def test_winogrande_partial_scoring(tmp_path):
    """The option fills the blank in each context; the rest of the sentence is the one continuation scored;
    a demonstration is the gold-filled context, " ", the rest."""
    other = {"sentence": "The cup fell because _ was heavy.", "option1": "it", "option2": "the table", "answer": "2"}
    folder = save(tmp_path / "w", validation=[WINO], train=[other])
    [task] = load_benchmark(f"winogrande={folder}")
    [it] = task.items
    assert it.contexts == [
        "Sarah was a much better surgeon than Maria so Sarah",
        "Sarah was a much better surgeon than Maria so Maria",
    ]
    assert it.choices == ["always got the harder cases."] * 2 and it.label == 0 and it.target_delimiter == " "
    [shot] = load_benchmark(f"winogrande={folder}", shots=1)
    demo = "The cup fell because the table was heavy.\n\n"
    assert shot.items[0].contexts == [demo + c for c in it.contexts]


def test_random_fewshot_draw_is_lm_evals(tmp_path):
    """lm-eval's default sampler: one Random(seed), rnd.sample(fewshot_docs, k) per scored doc in order."""
    train = [arc_row(10 + i, f"T{i}?", ["x", "y"], "AB"[i % 2]) for i in range(6)]
    test = [arc_row(i, f"Q{i}?", ["p", "q"], "A") for i in range(3)]
    folder = save(tmp_path / "a", test=test, train=train)
    [task] = load_benchmark(f"arc_easy={folder}", shots=2, seed=1234)
    rnd = random.Random(1234)
    for doc, it in zip(test, task.items):
        demos = rnd.sample(train, 2)
        shots = "".join(f"Question: {d['question']}\nAnswer: {'xy'[d['answerKey'] == 'B']}\n\n" for d in demos)
        assert it.context == shots + f"Question: {doc['question']}\nAnswer:"


def _mmlu_all(tmp_path, sizes):
    """An MMLU copy in the `all` config layout (a subject column), sizes[subject] test rows per subject."""
    test = [{**MMLU, "subject": s, "question": f"{s} {k}?"} for s, n in sizes.items() for k in range(n)]
    dev = [{**MMLU_DEV, "subject": s} for s in sizes]
    save(tmp_path / "mmlu" / "all", test=test, dev=dev)
    return tmp_path / "mmlu"


STEM = (
    "abstract_algebra anatomy astronomy college_biology college_chemistry college_computer_science "
    "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
    "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
    "high_school_mathematics high_school_physics high_school_statistics machine_learning"
).split()


def test_mmlu_groups_aggregate_as_lm_eval(tmp_path):
    from emo_slice.data.benchmarks.registry import MMLU_SUBJECTS

    rng = random.Random(0)
    sizes = {s: rng.randint(1, 4) for s in MMLU_SUBJECTS}
    tasks = {t.name: t for t in load_benchmark(f"mmlu={_mmlu_all(tmp_path, sizes)}")}
    assert len(tasks) == 57 and all(len(tasks[f"mmlu_{s}"].items) == n for s, n in sizes.items())
    results = {}
    for name in tasks:
        n, acc = rng.randint(20, 300), rng.random()
        results[name] = {"n_items": n, "acc,none": acc, "acc_stderr,none": math.sqrt(acc * (1 - acc) / (n - 1))}
    groups = aggregate_groups(results, tasks)
    assert set(groups) == {"mmlu", "mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other"}
    for g, members in (("mmlu", list(results)), ("mmlu_stem", [f"mmlu_{s}" for s in STEM])):
        ns = [results[m]["n_items"] for m in members]
        mean = sum(results[m]["acc,none"] * results[m]["n_items"] for m in members) / sum(ns)
        var = sum((n - 1) * results[m]["acc_stderr,none"] ** 2 * n for m, n in zip(members, ns)) / (sum(ns) - len(ns))
        assert groups[g]["acc,none"] == pytest.approx(mean, rel=1e-12)
        assert groups[g]["acc_stderr,none"] == pytest.approx(math.sqrt(var / sum(ns)), rel=1e-12)
        assert groups[g]["n_items"] == sum(ns)
    stem_only = {n: t for n, t in tasks.items() if n[5:] in STEM}
    assert set(aggregate_groups({n: results[n] for n in stem_only}, stem_only)) == {"mmlu_stem"}
    pooled = aggregate_groups({f"{n}@pool8": r for n, r in results.items()}, tasks)  # eval --pool 8: NAME@pool8
    assert pooled["mmlu@pool8"]["acc,none"] == pytest.approx(groups["mmlu"]["acc,none"], rel=1e-12)


def test_offline_error_names_hf_download(tmp_path, tiny_ckpt):
    env = {"HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    proc = invoke("eval", tiny_ckpt, "--task", "mmlu", env_extra=env)
    assert_one_line_error(proc, "`hf download cais/mmlu --repo-type dataset`", "--task mmlu=FOLDER")


def test_bad_sources_are_one_line(tmp_path):
    folder = save(tmp_path / "a", test=[ARC])
    with pytest.raises(DataError, match="no split 'train'"):
        load_benchmark(f"arc_easy={folder}", shots=1)  # the few-shot split is not there
    with pytest.raises(DataError, match="row 0 has no column 'goal'"):
        load_benchmark(f"piqa={save(tmp_path / 'p', validation=[ARC])}")
    with pytest.raises(DataError, match="no such folder"):
        load_benchmark(f"arc_easy={tmp_path / 'nothing'}")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "s.py").write_text("raise SystemExit('a dataset script must never run')\n")
    with pytest.raises(DataError, match="never runs"):
        load_benchmark(f"arc_easy={tmp_path / 's'}")
    with pytest.raises(UsageError, match="--map and --format apply to task files"):
        from emo_slice.data.tasks import load_tasks

        load_tasks(f"arc_easy={folder}", {"context": "question"})


def test_folder_of_files_named_by_split(tmp_path, monkeypatch):
    """A local copy as plain files: one folder per config, SPLIT.jsonl / SPLIT-00000-of-00001.parquet (dev too)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    sub = tmp_path / "mmlu" / "anatomy"
    sub.mkdir(parents=True)
    (sub / "test.jsonl").write_text(json.dumps({**MMLU, "subject": "anatomy"}) + "\n")
    datasets.Dataset.from_list([{**MMLU_DEV, "subject": "anatomy"}]).to_parquet(str(sub / "dev-00000-of-00001.parquet"))
    [task] = load_benchmark(f"mmlu_anatomy={tmp_path / 'mmlu'}", shots=1)
    assert task.items[0].context == "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:"
    assert task.prompt.endswith("What is 1+1?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n")


def test_unknown_variant_is_one_line(tiny_ckpt):
    r = invoke("eval", tiny_ckpt, "--task", "hellaswag:mc")
    assert_one_line_error(r, "hellaswag has no OLMES multiple-choice variant", "arc_easy")


def _fake_hub_cache(root, repo="allenai/ai2_arc", config="ARC-Easy"):
    """A hub cache holding `repo` as `hf download` leaves it: refs/main, a snapshot with README configs, parquet."""
    base = root / ("datasets--" + repo.replace("/", "--"))
    snap = base / "snapshots" / "0123abcd"
    (snap / config).mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text("0123abcd")
    datasets.Dataset.from_list([ARC]).to_parquet(str(snap / config / "test-00000-of-00001.parquet"))
    (snap / "README.md").write_text(
        f"---\nconfigs:\n- config_name: {config}\n  data_files:\n  - split: test\n    path: {config}/test-*\n---\n"
    )


def test_hub_cache_snapshot_and_tasks_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "ds"))
    _fake_hub_cache(tmp_path / "hub")
    [task] = load_benchmark("arc_easy")
    assert task.items[0].context == "Question: Which gas do plants absorb?\nAnswer:"
    assert task.describe()["dataset"] == "allenai/ai2_arc:ARC-Easy" and task.describe()["split"] == "test"
    r = invoke("tasks", "--json")
    assert r.returncode == 0, r.stderr
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["arc_easy"]["cached"] is True and rows["mmlu"]["cached"] is False
    assert rows["mmlu"]["kind"] == "group of 57" and len(rows["mmlu"]["members"]) == 57
    assert rows["commonsense_qa"]["aliases"] == ["csqa"] and rows["mmlu_pro:mc"]["choices"] == "up to 10"
    assert rows["gsm8k"]["kind"] == "generative"
    assert "mmlu_anatomy" not in rows and "mmlu_anatomy" in {
        x["name"] for x in json.loads(invoke("tasks", "--all", "--json").stdout)
    }
    assert "arc_easy" in invoke("tasks").stdout


@pytest.mark.slow
def test_eval_end_to_end_on_a_local_copy(tmp_path, tiny_ckpt):
    train = [arc_row(10 + i, f"T{i}?", ["x", "y", "z"], "ABC"[i % 3]) for i in range(4)]
    folder = save(tmp_path / "arc", test=[ARC, arc_row(1, "Q?", ["a", "b"], "A")], train=train)
    r = invoke("eval", tiny_ckpt, "--task", f"arc_easy={folder}", "--shots", "1", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    res = data["results"]["arc_easy"]
    assert res["n_items"] == 2 and 0.0 <= res["acc,none"] <= 1.0
    assert data["tasks"]["arc_easy"]["shots"] == 1 and data["tasks"]["arc_easy"]["fewshot_split"] == "train"


def test_eval_mmlu_reports_the_groups(tmp_path, tiny_ckpt, monkeypatch):
    """`eval --task mmlu`: 57 subtasks scored, the groups added to results and tasks, shown in the tables (the
    scorer is replaced by a stub: the real one is covered above, the wiring is what is checked here)."""
    from emo_slice.data.benchmarks.registry import MMLU_SUBJECTS
    from emo_slice.eval import harness
    from emo_slice.eval.scoring import MCResult

    def fake_evaluate_mc(runner, items, *, task, **kw):
        acc = (sum(map(ord, task)) % 7) / 7
        return MCResult({"acc,none": acc, "acc_raw": acc, "n_items": len(items), "truncated": 0}, [], 0, len(items))

    monkeypatch.setattr(harness, "evaluate_mc", fake_evaluate_mc)
    folder = _mmlu_all(tmp_path, {s: 1 + (s in STEM) for s in MMLU_SUBJECTS})
    r = invoke("eval", tiny_ckpt, "--task", f"mmlu={folder}", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    res = data["results"]
    stem = [res[f"mmlu_{s}"]["acc,none"] for s in STEM]
    assert res["mmlu_stem"]["acc,none"] == pytest.approx(sum(stem) / len(stem))
    everything = [res[f"mmlu_{s}"]["acc,none"] * (1 + (s in STEM)) for s in MMLU_SUBJECTS]
    assert res["mmlu"]["acc,none"] == pytest.approx(sum(everything) / (57 + 19))
    assert res["mmlu"]["n_items"] == 57 + 19 and data["tasks"]["mmlu"]["items_scored"] == 57 + 19
    assert len(data["tasks"]["mmlu_humanities"]["group"]) == 13
    shown = invoke("eval", tiny_ckpt, "--task", f"mmlu_stem={folder}")
    assert shown.returncode == 0 and "mmlu_stem: 38 items" in shown.stdout and "mmlu:" not in shown.stdout
