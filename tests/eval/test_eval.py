"""emo-slice eval: log-likelihoods, metrics, few-shot prompts, field mapping, bad input, the CLI."""

import json
import math

import pytest
import torch
from conftest import assert_one_line_error, invoke

from emo_slice.data.sources import MCItem, split_fewshot
from emo_slice.data.tasks import load_task, parse_map
from emo_slice.eval.harness import evaluate_lm, evaluate_mc, save_results, simple_evaluate, without_samples
from emo_slice.eval.metrics import mc_metrics
from emo_slice.eval.requests import encode_item, mc_rows, split_pair
from emo_slice.eval.runner import Runner
from emo_slice.io.tokenizer import ByteTokenizer


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _items(n=6):
    words = ["alpha", "beta gamma", "delta", "epsilon zeta eta", "theta", "iota kappa"]
    return [
        MCItem(
            str(i),
            f"Line {i}: the next word is\n" * (1 + i % 3),
            [words[(i + j) % 6] * (1 + j % 2) for j in range(3 + i % 2)],
            i % 3,
        )
        for i in range(n)
    ]


def _task_records(n=8):
    return [{"id": it.id, "context": it.context, "choices": it.choices, "label": it.label} for it in _items(n)]


@pytest.fixture(scope="module")
def runner(tiny_ckpt):
    return Runner(str(tiny_ckpt))


def _direct_ll(model, ctx_ids, cont_ids):
    """Log-likelihood of cont given ctx with one plain forward pass of ctx + cont."""
    ids = torch.tensor([ctx_ids + cont_ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).float(), -1)[0]
    C = len(ctx_ids)
    return sum(lp[C - 1 + k, t].item() for k, t in enumerate(cont_ids))


def test_loglikelihoods_equal_direct_per_choice(runner):
    items = _items(6)
    prefix = "demo context\nanswer\n\n"
    res = evaluate_mc(runner, items, prefix=prefix, batch_size=4)  # rows of different length share batches
    tok = runner.tokenizer
    for it, p in zip(items, res.predictions):
        ctx, _ = split_pair(prefix + it.context, it.choices[0])
        want = [
            _direct_ll(runner.model, tok.encode(ctx), tok.encode(split_pair(prefix + it.context, c)[1]))
            for c in it.choices
        ]
        assert p["loglikelihoods"] == pytest.approx(want, abs=1e-4)
        assert p["pred"]["acc_raw"] == max(range(len(want)), key=lambda i: want[i])
    # layer by layer: the same numbers
    lw = Runner(runner.path, layerwise=True)
    res_lw = evaluate_mc(lw, items, prefix=prefix, batch_size=2)
    for a, b in zip(res.predictions, res_lw.predictions):
        assert a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)


def test_context_and_continuation_tokenised_like_lm_eval(runner):
    assert split_pair("Q: x\n", "ans") == ("Q: x", "\nans")
    assert split_pair("Q: x", " ans") == ("Q: x", " ans")
    enc = encode_item(runner.tokenizer, MCItem("0", "Q: x \n", ["a", "bc"], 0), 512)
    assert enc.ctx == list(b"Q: x") and enc.conts == [list(b" \na"), list(b" \nbc")]
    assert enc.texts == [" \na", " \nbc"] and not enc.truncated
    cut = encode_item(runner.tokenizer, MCItem("0", "abcdefghij", ["xyz", "x"], 0), 8)
    assert cut.cut == [True, True] and cut.ctx == list(b"abcdefghij")  # encoded whole, cut per request:
    rows, _ = mc_rows([cut], 8)  # each keeps its last max_length + 1 tokens, its last token not input
    assert [bytes(r.ids) for r in rows] == [b"efghijxy", b"cdefghij"]
    assert [r.target for r in rows] == [list(b"xyz"), list(b"x")] and [r.pred for r in rows] == [[5, 6, 7], [7]]


def test_metric_normalisations_on_a_hand_made_item():
    item = MCItem("h", "ctx", ["a", "bbbbbbbb", "éééé", "dddd"], 2, target_delimiter="  ")
    enc = encode_item(ByteTokenizer(), item, 100)
    lls = [[-3.0, -10.0, -9.0, -6.0]]
    ntoks = [[1, 4, 4, 8]]  # tokens as if from a sub-word tokenizer
    metrics, preds = mc_metrics([item], [enc], lls, ntoks, [[0.0, -12.0, 0.0, 0.0]])
    # raw: -3 best; per token: -3, -2.5, -2.25, -0.75; per scored char ("  " + choice: 3, 10, 6, 6): -1, -1,
    # -1.5, -1; per scored byte (3, 10, 10, 6): -1, -1, -0.9, -1; lm-eval's acc_norm per len(choice)
    # (1, 8, 4, 4): -3, -1.25, -2.25, -1.5; uncond: -3, 2, -9, -6
    assert preds[0]["pred"] == {
        "acc,none": 0,
        "acc_norm,none": 1,
        "acc_raw": 0,
        "acc_per_token": 3,
        "acc_per_char": 0,
        "acc_per_byte": 2,
        "acc_uncond": 1,
    }
    assert metrics["acc_per_byte"] == 1.0 and metrics["acc_raw"] == 0.0 and metrics["acc_norm,none"] == 0.0
    assert metrics["acc_stderr,none"] == "N/A" and metrics["acc_raw_stderr"] == 0.0  # one item
    assert metrics["bits_per_byte_gold"] == pytest.approx(9.0 / math.log(2) / 10)


def test_uncond_scores_choices_after_answer_prompt(runner):
    items = _items(3)
    res = evaluate_mc(runner, items, uncond=True)
    tok = runner.tokenizer
    for it, p in zip(items, res.predictions):
        want = [
            _direct_ll(runner.model, tok.encode("Answer:"), tok.encode(split_pair(it.context, c)[1]))
            for c in it.choices
        ]
        assert p["loglikelihoods_uncond"] == pytest.approx(want, abs=1e-4)
    assert "acc_uncond" in res.metrics


def test_fewshot_prompt_seeded_and_demos_not_scored(tmp_path):
    path = _write_jsonl(tmp_path / "t.jsonl", _task_records(8))
    t = load_task(str(path), shots=2, seed=3)
    demos, rest = split_fewshot(load_task(str(path)).items, 2, 3)
    assert [d.id for d in t.demos] == [d.id for d in demos]
    assert {d.id for d in t.demos}.isdisjoint(it.id for it in t.items) and len(t.items) == 6
    assert t.prompt == "".join(d.context + d.choices[d.label] + "\n\n" for d in demos)
    assert load_task(str(path), shots=2, seed=3).prompt == t.prompt  # same seed, same prompt
    assert len(load_task(str(path), shots=2, seed=3, limit=4).items) == 4


def test_lm_perplexity_matches_direct(runner):
    docs = ["hello there, general kenobi", "the quick brown fox"]
    r = evaluate_lm(runner, docs, mode="rows")
    nll = -sum(_direct_ll(runner.model, [0], list(d.encode())) for d in docs)
    assert r["tokens"] == r["bytes"] == sum(len(d) for d in docs)
    assert r["bits_per_byte"] == pytest.approx(nll / math.log(2) / r["bytes"], rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(nll / r["tokens"]), rel=1e-5)
    packed = evaluate_lm(runner, docs, mode="packed")
    assert packed["tokens"] == r["tokens"] and packed["mode"] == "packed"
    cut = evaluate_lm(runner, docs, mode="rows", max_length=8)
    assert cut["tokens"] == r["tokens"] and cut["windows_cut"] > 0


def _arc_dataset(path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict(
        {
            "id": ["q1", "q2"],
            "question": ["Which is a planet?", "Which is warm?"],
            "choices": [
                {"text": ["Sun", "Mars", "Moon", "Comet"], "label": ["A", "B", "C", "D"]},
                {"text": ["ice", "fire", "snow"], "label": ["1", "2", "3"]},
            ],
            "answerKey": ["B", "2"],
        }
    ).save_to_disk(str(path))
    return path


def _hellaswag_dataset(path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict(
        {
            "ind": [4, 9],
            "activity_label": ["Cooking", "Running"],
            "ctx": ["A man cracks an egg. He", "She laces her shoes [title] and"],
            "endings": [["fries it.", "eats the shell.", "sings.", "flies."], ["runs.", "sleeps.", "swims.", "cooks."]],
            "label": ["0", "0"],
        }
    ).save_to_disk(str(path))
    return path


def test_arc_shape_detected_and_mapped(tmp_path):
    t = load_task(str(_arc_dataset(tmp_path / "arc")))
    assert t.format == "arc"
    assert t.items[0].context == "Question: Which is a planet?\nAnswer:"
    assert t.items[0].choices == ["Sun", "Mars", "Moon", "Comet"] and t.items[0].label == 1
    assert t.items[0].target_delimiter == " "  # scored: " Sun"; lm-eval's acc_norm divides by len("Sun")
    assert t.items[1].label == 1  # answerKey "2" among choices.label ["1", "2", "3"]
    m = load_task(str(tmp_path / "arc"), parse_map("context=question,choices=choices.text,label=answerKey"))
    assert m.format == "plain" and m.items[0].context == "Which is a planet?"
    assert m.items[0].choices == ["Sun", "Mars", "Moon", "Comet"] and [i.label for i in m.items] == [1, 1]


def test_hellaswag_shape_detected_and_mapped(tmp_path):
    t = load_task(str(_hellaswag_dataset(tmp_path / "hs")))
    assert t.format == "hellaswag" and [i.id for i in t.items] == ["4", "9"]
    assert t.items[0].context == "Cooking: A man cracks an egg. He"
    assert t.items[0].choices[0] == "fries it." and t.items[0].target_delimiter == " " and t.items[0].label == 0
    assert t.items[1].context == "Running: She laces her shoes. and"


def _cli(*args):
    r = invoke("eval", *args)
    return r.returncode, r.stdout, r.stderr


def test_simple_evaluate_scores_both_models_on_the_same_items(fixtures, tmp_path):
    task = _write_jsonl(tmp_path / "code.jsonl", _task_records(6))
    seen = []
    data = simple_evaluate(
        str(fixtures / "emo-tiny-keep-1-3-4-6"),
        against=str(fixtures / "emo-tiny"),
        tasks=[str(task), str(task)],
        shots=1,
        seed=2,
        log_samples=True,
        progress=lambda label, done, total, *_: seen.append((label, done, total)),
    )
    assert list(data["results"]) == ["code", "code_2"] == list(data["against_results"])
    assert list(data["models"]) == ["model", "against"] and set(data["comparison"]) == {"code", "code_2"}
    ids = {
        role: [s["id"] for s in data["samples"] if s["model"] == role and s["task"] == "code"]
        for role in ("model", "against")
    }
    assert ids["model"] == ids["against"] and len(ids["model"]) == 5  # one demonstration drawn, not scored
    assert ("against code_2", 5, 5) in seen and all(label.split()[0] in ("model", "against") for label, *_ in seen)
    written = save_results(data, out=tmp_path / "r" / "res.json", predictions=tmp_path / "p.jsonl")
    assert json.loads(written[0].read_text()) == json.loads(json.dumps(without_samples(data), default=str))
    assert len(written[1].read_text().splitlines()) == 20 and "samples" not in json.loads(written[0].read_text())


def test_simple_evaluate_takes_task_objects_and_typed_settings(fixtures, tmp_path):
    """A Task object (as lm-eval takes task objects) is scored as it is, and equals its spec read with the same
    settings; the settings object and the keywords are the same request."""
    from dataclasses import replace

    from emo_slice.eval.settings import EvalSettings

    task = _write_jsonl(tmp_path / "code.jsonl", _task_records(6))
    model = str(fixtures / "emo-tiny")
    by_spec = simple_evaluate(model, tasks=[str(task)], shots=1, seed=2, batch_size=4)
    obj = load_task(str(task), shots=1, seed=2)
    by_object = simple_evaluate(model, tasks=[obj], settings=EvalSettings(batch_size=4))
    assert by_object["results"] == by_spec["results"] and by_object["tasks"] == by_spec["tasks"]
    assert by_spec["settings"]["shots"] == 1 and by_object["settings"]["shots"] == 0  # the object carries its own
    fewer = replace(obj, items=obj.items[:2])  # e.g. the items held out of a calibration
    assert simple_evaluate(model, tasks=[fewer])["tasks"]["code"]["items_scored"] == 2


def test_a_bad_against_fails_before_the_first_model_runs(fixtures, tmp_path, monkeypatch):
    import emo_slice.eval.harness as harness

    task = _write_jsonl(tmp_path / "t.jsonl", _task_records(3))
    monkeypatch.setattr(harness, "Runner", lambda *a, **k: pytest.fail("scored before --against was checked"))
    proc = invoke("eval", fixtures / "emo-tiny", "--against", tmp_path / "missing", "--task", task)
    assert_one_line_error(proc, "no checkpoint folder", "missing")
    with pytest.raises(Exception, match="no checkpoint folder"):
        simple_evaluate(str(fixtures / "emo-tiny"), against=str(tmp_path / "missing"), tasks=[str(task)])


@pytest.mark.slow
def test_cli_slice_against_full_end_to_end(fixtures, tmp_path):
    task = _write_jsonl(tmp_path / "code.jsonl", _task_records(8))
    out, preds = tmp_path / "res" / "results.json", tmp_path / "preds.jsonl"
    code, stdout, stderr = _cli(
        fixtures / "emo-tiny-keep-1-3-4-6",
        "--against",
        fixtures / "emo-tiny",
        "--task",
        task,
        "--shots",
        1,
        "--uncond",
        "--lm",
        task,
        "--field",
        "context",
        "--out",
        out,
        "--predictions",
        preds,
        "--batch-size",
        3,
    )
    assert code == 0, stderr
    assert "acc_per_char" in stdout and "kept" in stdout and "parameters loaded" in stdout
    data = json.loads(out.read_text())
    assert set(data["results"]["code"]) >= {
        "acc_raw",
        "acc_per_token",
        "acc_per_char",
        "acc_per_byte",
        "acc_uncond",
        "bits_per_byte_gold",
        "acc,none",
        "acc_norm,none",
    }
    assert data["results"]["code"]["n_items"] == 7 and data["tasks"]["code"]["shots"] == 1
    assert data["models"]["model"]["parameters"] < data["models"]["against"]["parameters"]
    assert data["models"]["model"]["fingerprint"] != data["models"]["against"]["fingerprint"]
    assert data["results"]["lm:code"]["perplexity"] > 1
    assert {"date", "emo_slice_version", "torch_version"} <= set(data["provenance"])
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(lines) == 14 and {x["model"] for x in lines} == {"model", "against"}


def test_cli_model_against_itself_shows_zero_difference(fixtures, tmp_path):
    task = _write_jsonl(tmp_path / "t.jsonl", _task_records(6))
    code, stdout, stderr = _cli(
        fixtures / "emo-tiny",
        "--against",
        fixtures / "emo-tiny",
        "--task",
        task,
        "--lm",
        task,
        "--field",
        "context",
        "--json",
    )
    assert code == 0, stderr
    data = json.loads(stdout)
    for task_cmp in data["comparison"].values():
        for c in task_cmp.values():
            assert c["diff"] == 0 and c["kept"] == 1


@pytest.mark.parametrize(
    "records,args,needle",
    [
        ([], [], "no records"),
        ([{"context": "a", "choices": ["x", "y"], "label": 5}], [], "out of range"),
        ([{"question": "a", "choices": ["x", "y"], "label": 0}], [], "--map context=FIELD"),
        ([{"context": "a", "choices": ["x", "y" * 50], "label": 0}], ["--max-length", "16"], "--max-length"),
        ([{"context": "a", "choices": ["x", "y"], "label": 0}], ["--shots", "1"], "--shots 1"),
        ([{"context": "a", "choices": ["x", "y"], "label": 0}], ["--map", "bogus"], "--map"),
    ],
)
def test_bad_input_one_line_no_traceback(fixtures, tmp_path, records, args, needle):
    task = _write_jsonl(tmp_path / "bad.jsonl", records)
    out = tmp_path / "r.json"
    code, stdout, stderr = _cli(fixtures / "emo-tiny", "--task", task, "--out", out, *args)
    assert code == 2 and needle in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and not out.exists()


def test_too_long_items_cut_from_left_and_counted(fixtures, tmp_path):
    recs = [
        {"context": "x" * 200, "choices": ["a", "b"], "label": 0},
        {"context": "short\n", "choices": ["a", "b"], "label": 1},
    ]
    task = _write_jsonl(tmp_path / "long.jsonl", recs)
    code, stdout, stderr = _cli(fixtures / "emo-tiny", "--task", task, "--json")  # max_position_embeddings 128
    assert code == 0, stderr
    assert json.loads(stdout)["results"]["long"]["truncated"] == 1
