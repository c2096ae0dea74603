"""lm-evaluation-harness-exact multiple choice: pair encoding on contexts cut mid-word (a BPE tokenizer trained
here), acc / acc_norm / stderr, per-request truncation, tree rows = per-choice rows, the `separate` option.

Every number is checked against a DIRECT computation written here from lm-eval 0.4.13's rules
(lm_eval/api/model.py `_encode_pair`, lm_eval/models/huggingface.py `_loglikelihood_tokens`,
lm_eval/api/task.py `process_results`, lm_eval/api/metrics.py `mean_stderr`): the `tokenizers` library
directly and a plain full forward of each request. With lm_eval installed, also against lm-eval itself.
"""

import json
import math
import statistics
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, invoke

from emo_slice.data.sources import MCItem, fewshot_prompt
from emo_slice.errors import DataError
from emo_slice.eval.encoding import encode_item
from emo_slice.eval.requests import mc_rows
from emo_slice.eval.runner import Runner
from emo_slice.eval.scoring import evaluate_mc

WORDS = (
    "the quick brown fox jumps over the lazy dog while the farmer watches from the barn and the children "
    "laugh at the brown dog because the fox is quicker than anyone thought the weather was warm and bright "
    "so the farmer brought bread and cheese to the field where the horses were standing near the river"
).split()
PREFIX = "the farmer watches the river.\n\n"


def _corpus() -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=12)) for _ in range(60)]  # ~700 words


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory):
    """A random tiny EMO checkpoint (vocab 512) holding a byte-level BPE tokenizer.json trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from emo_slice.io.build import random_checkpoint
    from emo_slice.model.presets import preset

    path = random_checkpoint(tmp_path_factory.mktemp("bpe") / "m", preset("tiny", vocab_size=512), seed=3, std=0.3)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<pad>"],  # ids 0 and 1: the config's eos and pad
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    assert 300 < tok.get_vocab_size() <= 512 and tok.token_to_id("<|endoftext|>") == 0
    tok.save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def runner(bpe_ckpt):
    r = Runner(str(bpe_ckpt))
    assert r.tokenizer.kind == "tokenizer.json"
    return r


@pytest.fixture(scope="module")
def hf_tok(bpe_ckpt):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(bpe_ckpt / "tokenizer.json"))


def _enc(hf_tok, text: str) -> list[int]:
    return hf_tok.encode(text, add_special_tokens=False).ids


def lm_eval_pair(hf_tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval 0.4.13 TemplateLM.loglikelihood + _encode_pair (causal), written out."""
    if context == "":
        return [0], _enc(hf_tok, continuation)
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole, ctx = _enc(hf_tok, context + continuation), _enc(hf_tok, context)
    return ctx, whole[len(ctx) :]


def separate_pair(hf_tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    return _enc(hf_tok, context), _enc(hf_tok, continuation)


@torch.no_grad()
def direct_lls(model, requests: list[tuple[list[int], list[int]]], max_length: int) -> list[float]:
    """lm-eval's HF _loglikelihood_tokens, written out: each request's input is
    (ctx + cont)[-(max_length + 1):][:-1], right padded into one batch, a plain full forward (no tree, no
    positions, no masks: causal attention never lets a real token see the padding after it), and the sum of
    the log-probabilities at its last len(cont) positions."""
    inps = [(ctx + cont)[-(max_length + 1) :][:-1] for ctx, cont in requests]
    T = max(map(len, inps))
    ids = torch.tensor([inp + [1] * (T - len(inp)) for inp in inps])
    lp_BTV = torch.log_softmax(model(ids).float(), -1)
    out = []
    for b, (inp, (_, cont)) in enumerate(zip(inps, requests)):
        lp = lp_BTV[b, len(inp) - len(cont) : len(inp)]
        out.append(float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()))
    return out


def lm_eval_metrics(items: list[MCItem], lls: list[list[float]]) -> dict:
    """lm-eval's process_results (multiple_choice) + mean / mean_stderr aggregation, written out."""
    acc, acc_norm = [], []
    for it, ll in zip(items, lls):
        choices = it.contexts if it.contexts else it.choices  # doc_to_choice: the contexts for Winogrande
        completion_len = np.array([float(len(c)) for c in choices])
        acc.append(1.0 if np.argmax(ll) == it.label else 0.0)
        acc_norm.append(1.0 if np.argmax(np.array(ll) / completion_len) == it.label else 0.0)
    return {
        "acc,none": sum(acc) / len(acc),
        "acc_norm,none": sum(acc_norm) / len(acc_norm),
        "acc_stderr,none": statistics.stdev(acc) / math.sqrt(len(acc)),
        "acc_norm_stderr,none": statistics.stdev(acc_norm) / math.sqrt(len(acc_norm)),
    }


def _items(hf_tok, n: int = 16, delimiter: str = "") -> list[MCItem]:
    """Contexts cut mid-word; 3-4 choices each (the true rest of the sentence and others' rests), of unequal
    lengths. Items where lm-eval's encoding leaves a choice no token of its own are left out."""
    rng = np.random.default_rng(1)
    sents = _corpus()
    out = []
    for i in range(200):
        s = sents[i % len(sents)]
        cuts = [k for k in range(8, len(s) - 10) if s[k - 1] != " " and s[k] != " "]
        k = int(rng.choice(cuts))
        others = [sents[int(j)] for j in rng.choice(len(sents), size=3, replace=False)]
        choices = [s[k:]] + [o[k : k + int(rng.integers(6, 30))].strip() or "x" for o in others][: 2 + i % 2]
        if delimiter:
            choices = [c.lstrip() for c in choices]
        label = i % len(choices)
        choices[0], choices[label] = choices[label], choices[0]
        item = MCItem(str(i), s[:k], choices, label, target_delimiter=delimiter)
        if all(lm_eval_pair(hf_tok, PREFIX + item.context, delimiter + c)[1] for c in choices):
            out.append(item)
        if len(out) == n:
            return out
    raise AssertionError("not enough items")


def _direct_lls(runner, hf_tok, items, max_length, pair=lm_eval_pair, prefix=PREFIX):
    reqs = []
    for it in items:
        ctxs = it.contexts or [it.context] * len(it.choices)
        reqs.append([pair(hf_tok, prefix + c, it.target_delimiter + ch) for c, ch in zip(ctxs, it.choices)])
    flat = iter(direct_lls(runner.model, [r for rs in reqs for r in rs], max_length))
    return [[next(flat) for _ in rs] for rs in reqs]


def test_pair_encoding_is_lm_evals_on_contexts_cut_mid_word(runner, hf_tok):
    items = _items(hf_tok, 24)
    differ = 0
    for it in items:
        enc = encode_item(runner.tokenizer, it, 128, PREFIX)
        sep = encode_item(runner.tokenizer, it, 128, PREFIX, encoding="separate")
        for c, choice in enumerate(it.choices):
            assert (enc.ctxs[c], enc.conts[c]) == lm_eval_pair(hf_tok, PREFIX + it.context, choice)
            assert (sep.ctxs[c], sep.conts[c]) == separate_pair(hf_tok, PREFIX + it.context, choice)
            differ += enc.conts[c] != sep.conts[c]
        assert enc.norms == [len(c) for c in it.choices]
    n = sum(len(it.choices) for it in items)
    assert differ >= n // 4, (differ, n)  # the test has choices whose tokens the two encodings disagree on


def test_scores_equal_lm_evals_formulas_computed_directly(runner, hf_tok):
    items = _items(hf_tok, 10)
    res = evaluate_mc(runner, items, prefix=PREFIX, batch_size=5)  # tree rows: no request is cut
    direct = _direct_lls(runner, hf_tok, items, 128)
    for p, want in zip(res.predictions, direct):
        assert p["loglikelihoods"] == pytest.approx(want, abs=2e-4)
    for key, value in lm_eval_metrics(items, direct).items():
        assert res.metrics[key] == pytest.approx(value, abs=1e-12), key
    flat = evaluate_mc(runner, items, prefix=PREFIX, per_choice_rows=True)  # one row per choice: the same
    for x, y in zip(res.predictions, flat.predictions):
        assert x["loglikelihoods"] == pytest.approx(y["loglikelihoods"], abs=2e-5) and x["pred"] == y["pred"]
    # acc_norm ranks by ll / len(choice), OLMES's acc_per_char by ll / len(scored text): here they are the same
    # texts (no delimiter, no moved whitespace); with a delimiter they are not (next test)
    assert [p["pred"]["acc_norm,none"] for p in res.predictions] == [p["pred"]["acc_per_char"] for p in res.predictions]


def test_acc_norm_divides_by_the_choice_without_the_delimiter(runner, hf_tok):
    items = _items(hf_tok, 8, delimiter=" ")
    items = [it for it in items if all(c and not c.startswith(" ") for c in it.choices)]
    res = evaluate_mc(runner, items, prefix=PREFIX)
    direct = _direct_lls(runner, hf_tok, items, 128)
    for p, want, it in zip(res.predictions, direct, items):
        assert p["loglikelihoods"] == pytest.approx(want, abs=2e-4)
        norm = [x / len(c) for x, c in zip(p["loglikelihoods"], it.choices)]
        per_char = [x / (len(c) + 1) for x, c in zip(p["loglikelihoods"], it.choices)]  # OLMES: " " + choice
        assert p["pred"]["acc_norm,none"] == int(np.argmax(norm))
        assert p["pred"]["acc_per_char"] == int(np.argmax(per_char))
    for key, value in lm_eval_metrics(items, direct).items():
        assert res.metrics[key] == pytest.approx(value, abs=1e-12), key
    # a demonstration is context + delimiter + gold choice, as lm-eval's few-shot context
    assert fewshot_prompt(items[:1]) == items[0].context + " " + items[0].choices[items[0].label] + "\n\n"


def test_truncation_is_per_request_as_lm_evals(runner, hf_tok):
    items = _items(hf_tok, 8)
    full = [encode_item(runner.tokenizer, it, 128, PREFIX) for it in items]
    longest = sorted(max(len(c) + len(x) for c, x in zip(e.ctxs, e.conts)) for e in full)
    L = longest[len(items) // 2] - 1  # some items have a request longer than L + 1 tokens, some not
    encs = [encode_item(runner.tokenizer, it, L, PREFIX) for it in items]
    cut = [e.truncated for e in encs]
    assert 0 < sum(cut) < len(items), cut
    rows, where = mc_rows(encs, L)
    for e, w in zip(encs, where):  # a tree row for an item with no cut request, one row per choice otherwise
        assert len({r for r, _ in w}) == (len(e.conts) if e.truncated else 1)
    assert all(len(r.ids) <= L for r, e in zip(rows, encs) if e.truncated)
    res = evaluate_mc(runner, items, prefix=PREFIX, max_length=L, batch_size=4)
    direct = _direct_lls(runner, hf_tok, items, L)
    for p, want in zip(res.predictions, direct):
        assert p["loglikelihoods"] == pytest.approx(want, abs=2e-4)
    assert res.metrics["truncated"] == sum(cut) and [p["truncated"] for p in res.predictions] == cut
    for key, value in lm_eval_metrics(items, direct).items():
        assert res.metrics[key] == pytest.approx(value, abs=1e-12), key
    flat = evaluate_mc(runner, items, prefix=PREFIX, max_length=L, per_choice_rows=True)
    for x, y in zip(res.predictions, flat.predictions):
        assert x["loglikelihoods"] == pytest.approx(y["loglikelihoods"], abs=2e-5) and x["pred"] == y["pred"]


def test_separate_encoding_reproduces_the_previous_scoring(runner, hf_tok):
    items = _items(hf_tok, 8)
    res = evaluate_mc(runner, items, prefix=PREFIX, encoding="separate")
    direct = _direct_lls(runner, hf_tok, items, 128, pair=separate_pair)
    for p, want, it in zip(res.predictions, direct, items):
        assert p["loglikelihoods"] == pytest.approx(want, abs=2e-4)
        assert p["tokens"] == [len(separate_pair(hf_tok, PREFIX + it.context, c)[1]) for c in it.choices]
        per_char = [x / len(c) for x, c in zip(want, it.choices)]
        assert p["pred"]["acc_raw"] == int(np.argmax(want)) and p["pred"]["acc_per_char"] == int(np.argmax(per_char))
    lm = evaluate_mc(runner, items, prefix=PREFIX)
    assert any(a["tokens"] != b["tokens"] for a, b in zip(res.predictions, lm.predictions))


def test_per_choice_contexts_scored_like_lm_evals_winogrande(runner, hf_tok):
    sents = _corpus()[:8]
    items = []
    for i, s in enumerate(sents):
        words = s.split()
        opts = [words[3], WORDS[(i * 7) % len(WORDS)]]
        rest = " ".join(words[4:])
        items.append(MCItem(str(i), "", [rest, rest], i % 2, [" ".join(words[:3] + [o]) for o in opts], " "))
    res = evaluate_mc(runner, items, prefix=PREFIX)
    direct = _direct_lls(runner, hf_tok, items, 128)
    for p, want in zip(res.predictions, direct):
        assert p["loglikelihoods"] == pytest.approx(want, abs=2e-4)
    for key, value in lm_eval_metrics(items, direct).items():  # acc_norm: / len(context), as lm-eval's code
        assert res.metrics[key] == pytest.approx(value, abs=1e-12), key
    gold = items[0].contexts[items[0].label]
    assert fewshot_prompt(items[:1]) == gold + " " + items[0].choices[0] + "\n\n"
    with pytest.raises(DataError, match="2 contexts for 3 choices"):
        encode_item(runner.tokenizer, MCItem("x", "", ["a", "b", "c"], 0, ["p", "q"]), 128)


def test_a_choice_without_tokens_of_its_own_is_refused(runner, hf_tok):
    ctx = "the brea"  # "the bread" is 2 tokens, "the brea" 4: lm-eval's whole[len(context_enc):] is empty
    assert len(_enc(hf_tok, ctx + "d")) <= len(_enc(hf_tok, ctx))
    with pytest.raises(DataError, match="choice 0 adds no tokens"):
        encode_item(runner.tokenizer, MCItem("0", ctx, ["d", "d and cheese"], 0), 128, where="t item 0")
    sep = encode_item(runner.tokenizer, MCItem("0", ctx, ["d", "d and cheese"], 0), 128, encoding="separate")
    assert sep.conts[0] == _enc(hf_tok, "d")  # separately, "d" is a token of its own


def test_cli_encoding_option_recorded_and_checked(bpe_ckpt, hf_tok, tmp_path):
    items = _items(hf_tok, 4)
    task = tmp_path / "t.jsonl"
    records = [{"context": it.context, "choices": it.choices, "label": it.label} for it in items]
    task.write_text("".join(json.dumps(r) + "\n" for r in records))
    runs = {}
    for enc in ("lm-eval", "separate"):
        r = invoke("eval", bpe_ckpt, "--task", task, "--encoding", enc, "--json")
        assert r.returncode == 0, r.stderr
        runs[enc] = json.loads(r.stdout)
        assert runs[enc]["settings"]["encoding"] == enc and enc in runs[enc]["settings"]["scoring"]
    keys = {"acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"}
    assert keys <= set(runs["lm-eval"]["results"]["t"])
    assert "--encoding" in invoke("eval", "--help").stdout
    assert_one_line_error(invoke("eval", bpe_ckpt, "--task", task, "--encoding", "joint"), "--encoding")


def _lm_eval_task(name: str, recs: list[dict], **config):
    import datasets
    from lm_eval.api.task import ConfigurableTask

    metrics = [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")]
    return ConfigurableTask(
        config=dict(
            task=name,
            custom_dataset=lambda **_: datasets.DatasetDict({"test": datasets.Dataset.from_list(recs)}),
            test_split="test",
            output_type="multiple_choice",
            metric_list=metrics,
            **config,
        )
    )


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_equal_to_lm_evaluation_harness_itself(bpe_ckpt, runner, hf_tok, tmp_path):
    """lm-eval's own HF backend (HFLM on the checkpoint exported to Qwen2MoeForCausalLM, which computes what
    EMO computes) and its own process_results / aggregation, on the same items: the same numbers."""
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import get_task_dict

    from emo_slice.export import export

    export(bpe_ckpt, tmp_path / "q", "qwen2-moe")
    L = 20  # some requests cut from the left
    items = [replace(it, context=PREFIX + it.context) for it in _items(hf_tok, 10, delimiter=" ")]
    wino = []
    for i, s in enumerate(_corpus()[:6]):
        w = s.split()
        contexts = [" ".join(w[:3] + [o]) for o in ("fox", w[3])]
        wino.append(MCItem(str(i), "", [" ".join(w[4:])] * 2, i % 2, contexts, " "))
    plain = _lm_eval_task(
        "plain",
        [{"context": it.context, "choices": it.choices, "label": it.label} for it in items],
        doc_to_text=lambda d: d["context"],
        doc_to_choice=lambda d: d["choices"],
        doc_to_target=lambda d: d["label"],
    )
    multi = _lm_eval_task(  # Winogrande's shape: doc_to_text the gold index, doc_to_choice the contexts
        "multi",
        [{"contexts": it.contexts, "rest": it.choices[0], "label": it.label} for it in wino],
        doc_to_text=lambda d: d["label"],
        doc_to_choice=lambda d: d["contexts"],
        doc_to_target=lambda d: d["rest"],
    )
    lm = HFLM(pretrained=str(tmp_path / "q"), device="cpu", batch_size=8, max_length=L, dtype="float32")
    out = evaluate(lm=lm, task_dict=get_task_dict([plain, multi]), bootstrap_iters=1, log_samples=True)
    for name, its in (("plain", items), ("multi", wino)):
        ours = evaluate_mc(runner, its, max_length=L)
        theirs = sorted(out["samples"][name], key=lambda s: s["doc_id"])
        for p, s in zip(ours.predictions, theirs):
            assert p["loglikelihoods"] == pytest.approx([r[0][0] for r in s["resps"]], abs=1e-3)
        for key in ("acc,none", "acc_stderr,none", "acc_norm,none", "acc_norm_stderr,none"):
            assert ours.metrics[key] == pytest.approx(out["results"][name][key], abs=1e-9), (name, key)
    assert ours.metrics["truncated"] == 0 and evaluate_mc(runner, items, max_length=L).metrics["truncated"] > 0
