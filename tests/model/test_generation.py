"""Generation with the KV cache equals generation by full forwards; batching with left padding changes nothing."""

import torch
from conftest import random_model

import emo_slice


def _model(seed=0):
    return random_model(seed, std=0.3, eos_token_id=0, pad_token_id=1)


@torch.no_grad()
def _greedy_by_full_forward(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids


def test_greedy_with_cache_equals_full_forward_every_step():
    model = _model()
    prompt = torch.randint(2, 64, (12,)).tolist()
    got = emo_slice.generate(model, [prompt], 24)
    assert got[0].tolist() == _greedy_by_full_forward(model, prompt, 24)


def test_batched_left_padding_equals_each_prompt_alone():
    model = _model(1)
    prompts = [torch.randint(2, 64, (n,)).tolist() for n in (3, 10, 7)]
    batch = emo_slice.generate(model, prompts, 16)
    assert batch.shape == (3, 10 + 16)
    for b, p in enumerate(prompts):
        alone = emo_slice.generate(model, [p], 16)[0].tolist()
        assert batch[b, 10 - len(p) :].tolist() == alone
        assert batch[b, : 10 - len(p)].tolist() == [1] * (10 - len(p))  # the left padding is kept


def test_eos_stops_a_row_and_pads_it():
    model = _model(2)
    prompt = torch.randint(2, 64, (6,)).tolist()
    free = _greedy_by_full_forward(model, prompt, 12)[6:]
    eos = free[3]  # make the 4th generated token the end of the sequence
    first = free.index(eos)
    out = emo_slice.generate(model, [prompt, prompt], 12, eos_token_id=eos)[0, 6:].tolist()
    assert out[: first + 1] == free[: first + 1]
    assert len(out) == first + 1 or out[first + 1 :] == [1] * (len(out) - first - 1)


def test_sampling_is_seeded_and_top_p_near_zero_is_greedy():
    model = _model(3)
    prompt = torch.randint(2, 64, (5,)).tolist()
    a = emo_slice.generate(model, [prompt], 10, do_sample=True, generator=torch.Generator().manual_seed(7))
    b = emo_slice.generate(model, [prompt], 10, do_sample=True, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    tiny_p = emo_slice.generate(
        model, [prompt], 10, do_sample=True, top_p=1e-6, generator=torch.Generator().manual_seed(7)
    )
    assert tiny_p[0].tolist() == _greedy_by_full_forward(model, prompt, 10)


def test_cli_generate_side_by_side_equals_the_library(fixtures, tmp_path):
    import json

    from conftest import assert_one_line_error, invoke

    from emo_slice.io.tokenizer import load_tokenizer

    slice_, full = fixtures / "emo-tiny-keep-1-3-4-6", fixtures / "emo-tiny"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\n\nHello, world\n")
    r = invoke("generate", slice_, "--against", full, "--prompts", prompts, "--max-new-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["prompts"] == ["def f(x):", "Hello, world"]
    for label, path in (("model", slice_), ("against", full)):
        tok = load_tokenizer(path)
        model = emo_slice.load_model(path, dtype="float32")
        for p, text in zip(data["prompts"], data["completions"][label]):
            ids = emo_slice.generate(model, [tok.encode(p)], 8, eos_token_id=tok.eos_token_id)[0, len(tok.encode(p)) :]
            new = ids.tolist()
            new = new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new
            assert text == tok.decode(new)
    assert_one_line_error(invoke("generate", full, "--prompt", "a", "--prompts", prompts), "exactly one")
    assert_one_line_error(invoke("generate", full, "--prompt", "a", "--device", "cuda:7"), "--device")
