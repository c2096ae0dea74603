"""Generative evaluation: lm-eval's GSM8K answer extraction and exact match, the gsm8k_cot prompt, and
`emo-slice eval --gen-task` against a direct greedy decoding by full forward passes."""

import json

import pytest
import torch
from conftest import assert_one_line_error, invoke

from emo_slice.data.gen_tasks import GSM8K_FILTERS, GSM8K_MATCH, gsm8k_prompt, gsm8k_target
from emo_slice.eval.generative import cut_at_stops, exact_match, regex_extract

STRICT, FLEX = ((rx, g) for _, rx, g in GSM8K_FILTERS)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model gains nothing from threads, and on a loaded machine they only wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize(
    "text, strict, flexible",
    [
        ("So 48 + 24 = 72. The answer is 72.", "72", "72."),
        ("The answer is 72", "7", "72"),  # the pattern's final "." (any character) takes the "2"
        ("The answer is 3. No wait. The answer is 4.", "3.", "4."),  # strict: first; flexible: last
        ("He paid $12.50, then 3 more, so 15.50 in all", "[invalid]", "15.50"),
        ("The answer is -1,000.5 dollars", "-1,000.5", "-1,000.5"),
        ("x 7 y", "[invalid]", "7"),  # the single-digit alternative (second group)
        ("I do not know.", "[invalid]", "[invalid]"),
    ],
)
def test_gsm8k_answer_extraction(text, strict, flexible):
    assert regex_extract(text, *STRICT) == strict
    assert regex_extract(text, *FLEX) == flexible


def test_exact_match_options():
    assert exact_match("8.", "8", **GSM8K_MATCH)  # the final "." is ignored
    assert not exact_match("8.", "8")
    assert exact_match("$1,234", "1234", **GSM8K_MATCH)
    assert exact_match("42", "Step one.\nStep two.\n#### 42", **GSM8K_MATCH)  # "(?s).*#### " drops the working
    assert not exact_match("[invalid]", "42", **GSM8K_MATCH)
    assert exact_match("ABC", "abc", ignore_case=True) and not exact_match("ABC", "abc")
    assert exact_match("a.b!", "ab", ignore_punctuation=True) and not exact_match("a.b!", "ab")
    assert exact_match("a1b2", "ab", ignore_numbers=True)
    assert cut_at_stops("7. Q: next\n</s>", ["Q:", "</s>"]) == "7. "


def test_gsm8k_prompt_is_lm_evals_gsm8k_cot():
    p = gsm8k_prompt("What is 2+2?")
    assert p.startswith(
        "Q: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are "
        "done, there will be 21 trees. How many trees did the grove workers plant today?\n"
        "A: There are 15 trees originally. Then there were 21 trees after some more were planted. So there must "
        "have been 21 - 15 = 6. The answer is 6.\n\nQ: If there are 3 cars in the parking lot"
    )
    assert p.endswith("23 - 15 is 8. The answer is 8.\n\nQ: What is 2+2?\nA:")
    assert p.count("\n\nQ: ") == 8 and p.count("The answer is") == 8
    assert gsm8k_target("3 + 4 = 7\n#### 1,234 ") == "1,234"


class _Scripted(torch.nn.Module):
    """A "model" whose greedy pick for row b at step s is script[b][s] (logits one-hot), via the KV cache path."""

    def __init__(self, script: list[list[int]], vocab: int):
        super().__init__()
        from types import SimpleNamespace

        self.script, self.vocab, self.calls = script, vocab, 0
        self.config = SimpleNamespace(pad_token_id=1)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids_BT, **kw):
        logits_BTV = torch.zeros(ids_BT.shape[0], ids_BT.shape[1], self.vocab)
        for b, row in enumerate(self.script):
            logits_BTV[b, -1, row[min(self.calls, len(row) - 1)]] = 1.0
        self.calls += 1
        return logits_BTV


def test_each_row_stops_at_its_own_stop_sequence_special_tokens_included():
    from tokenizers import Tokenizer as HFTokenizer

    from emo_slice.eval.generative import decode_new, generate_until
    from emo_slice.io.tokenizer import Tokenizer, byte_tokenizer_json

    backend = HFTokenizer.from_str(byte_tokenizer_json())
    backend.add_special_tokens(["<|im_end|>"])  # id 256: lm-eval's stop check sees it, its final text does not
    tok = Tokenizer(backend, eos_token_id=0, pad_token_id=1)
    script = [[*b"ab", 256, *b"cd Q: more"], [*b"xy Q: zz"], [*b"long text", 0, *b"after eos"]]
    outs = generate_until(_Scripted(script, 257), tok, [[65], [66, 67], [68]], [["<|im_end|>", "Q:"]] * 3, 30)
    texts = [cut_at_stops(decode_new(tok, o), ["<|im_end|>", "Q:"]) for o in outs]
    assert texts == ["ab", "xy ", "long text"]
    assert [o.index(0) + 1 for o in outs] == [4, 6, 10]  # a row ends one step after its stop (EOS forced)
    assert [len(o) for o in outs] == [10] * 3  # the batch ends when its last row does, not after 30 tokens


@torch.no_grad()
def _direct_greedy(model, tok, prompt: str, n: int, stops: list[str]) -> str:
    """Greedy by a full forward at every step (no cache), to EOS or n tokens, cut at the stops."""
    ids, new = tok.encode(prompt), []
    for _ in range(n):
        t = int(model(torch.tensor([ids + new]))[0, -1].argmax())
        if t == tok.eos_token_id:
            break
        new.append(t)
    return cut_at_stops(tok.decode(new), stops)


@pytest.mark.slow
def test_gen_task_equals_direct_greedy_cut_at_the_stop(tiny_ckpt, tmp_path):
    from emo_slice.io.loading import load_model
    from emo_slice.io.tokenizer import load_tokenizer

    model, tok = load_model(tiny_ckpt), load_tokenizer(tiny_ckpt)
    prompts, n = ["The cat sat", "Numbers: 1, 2, 3,", "def f(x):"], 16
    free = _direct_greedy(model, tok, prompts[0], n, [])
    stop = next(free[i : i + 2] for i in range(3, len(free) - 2) if "\ufffd" not in free[i : i + 2])
    records = [
        {"prompt": prompts[0], "target": cut_at_stops(free, [stop]).strip(), "stop": [stop], "id": "a"},
        {"prompt": prompts[1], "target": "4", "id": "b"},
        {"prompt": prompts[2], "target": "return x", "stop": ["\n", "ret"]},
    ]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out, preds = tmp_path / "r.json", tmp_path / "p.jsonl"
    args = ["--gen-task", tmp_path / "g.jsonl", "--max-new-tokens", n, "--batch-size", 2, "--out", out]
    r = invoke("eval", tiny_ckpt, "--against", tiny_ckpt, *args, "--predictions", preds)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    samples = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [s["model"] for s in samples] == ["model"] * 3 + ["against"] * 3
    for s, rec in zip(samples, records):
        want = _direct_greedy(model, tok, rec["prompt"], n, rec.get("stop", []) + ["\x00"])
        assert s["generated"] == want
        assert s["correct"]["none"] == (want.strip() == rec["target"])
    assert samples[0]["correct"]["none"] and samples[2]["id"] == "2"
    m = data["results"]["g"]
    assert m["exact_match,none"] == pytest.approx(sum(s["correct"]["none"] for s in samples[:3]) / 3)
    assert m["generated_tokens"] < 3 * n  # the first row stopped early
    assert data["comparison"]["g"]["exact_match,none"]["kept"] == 1.0
    assert "exact_match,none" in r.stdout and "g: 3 items" in r.stdout


@pytest.mark.slow
def test_gsm8k_from_a_saved_dataset_and_the_offline_error(tiny_ckpt, tmp_path, monkeypatch):
    import datasets

    q = ["Tom has 3 apples and buys 4 more. How many?", "What is 2+2?"]
    data = {"question": q, "answer": ["3 + 4 = 7\n#### 7", "2 + 2 = 4\n#### 4"]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(data)}).save_to_disk(str(tmp_path / "gsm"))
    args = ["--max-new-tokens", 3, "--max-length", 64, "--limit", 1, "--json"]
    r = invoke("eval", tiny_ckpt, "--task", f"gsm8k={tmp_path / 'gsm'}", *args)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    m, info = res["results"]["gsm8k"], res["tasks"]["gsm8k"]
    assert {"exact_match,strict-match", "exact_match,flexible-extract"} <= set(m)
    assert {"exact_match_stderr,strict-match", "exact_match_stderr,flexible-extract"} <= set(m)
    assert (info["items_in_source"], info["items_scored"], info["shots"], m["truncated"]) == (2, 1, 8, 1)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert_one_line_error(invoke("eval", tiny_ckpt, "--task", "gsm8k"), "hf download openai/gsm8k")


def test_generative_tasks_refuse_layerwise(tiny_ckpt, tmp_path):
    (tmp_path / "g.jsonl").write_text('{"prompt": "a", "target": "b"}\n')
    r = invoke("eval", tiny_ckpt, "--gen-task", tmp_path / "g.jsonl", "--layerwise")
    assert_one_line_error(r, "whole model in memory", "--layerwise")
    r = invoke("eval", tiny_ckpt, "--gen-task", tmp_path / "g.jsonl", "--max-new-tokens", 512)
    assert_one_line_error(r, "--max-new-tokens 512", "context")
