"""Generation's prompt pass makes logits at the last position only ([B, 1, V], never [B, T, V]), and its greedy
tokens stay those of a plain full-forward greedy loop, with and without the prompt's document pool."""

import pytest
import torch
from conftest import random_model

from emo_slice.model.generation import generate, last_logits

POOL = 3  # random_model: 8 routed experts, 2 routed per token


def _model(seed=0, **config):
    return random_model(seed, std=0.3, eos_token_id=0, pad_token_id=1, **config)


def _prompts(lengths=(3, 10, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (n,), generator=g).tolist() for n in lengths]


class _IndependentPromptPool:
    """The prompt's document pool, written here from its definition: on the first forward (the prompt, one
    row, one document), per layer the top-P routed experts by the prompt's summed router probability; that
    forward and every later one route only among them (other routed logits -inf before the softmax)."""

    def __init__(self, model, P: int):
        self.P, self.R = P, model.config.num_experts - model.config.num_shared_experts
        self.keep_R: dict[int, torch.Tensor] = {}
        self.handles = [m.mlp.gate.register_forward_hook(self._hook(l)) for l, m in enumerate(model.model.layers)]

    def _hook(self, layer: int):
        def hook(_module, _inputs, logits_NE):
            z_NR = logits_NE[:, : self.R]
            if layer not in self.keep_R:
                q_R = torch.softmax(z_NR.float(), dim=-1).sum(0)
                keep_R = torch.zeros(self.R, dtype=torch.bool)
                keep_R[q_R.topk(self.P).indices] = True
                self.keep_R[layer] = keep_R
            routed_NR = z_NR.masked_fill(~self.keep_R[layer], float("-inf"))
            return torch.cat([routed_NR, logits_NE[:, self.R :]], dim=-1)

        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def _greedy_full_forward(model, prompt: list[int], n: int, pool: int | None = None) -> list[int]:
    """n greedy tokens, each the argmax of model(ids)[:, -1] over the whole sequence so far (no cache)."""
    routing = _IndependentPromptPool(model, pool) if pool else None
    ids = list(prompt)
    try:
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    finally:
        if routing is not None:
            routing.remove()
    return ids


@pytest.mark.parametrize("pool", [None, POOL])
def test_batched_greedy_equals_a_full_forward_greedy_loop(pool):
    model, prompts, n = _model(), _prompts(), 12
    got = generate(model, prompts, n, pool=pool)
    T = max(len(p) for p in prompts)
    for b, p in enumerate(prompts):
        assert got[b, T - len(p) :].tolist() == _greedy_full_forward(model, p, n, pool)
    if pool:  # the pool is in force: the continuation differs from the unpooled one
        assert not torch.equal(got, generate(model, prompts, n))


def _head_inputs(model):
    shapes: list[tuple[int, ...]] = []
    handle = model.lm_head.register_forward_hook(lambda _m, inputs, _out: shapes.append(tuple(inputs[0].shape)))
    return shapes, handle


@pytest.mark.parametrize("pool", [None, POOL])
def test_the_prompt_pass_never_makes_logits_at_every_position(pool):
    model, prompts, n = _model(1), _prompts(seed=1), 5
    shapes, handle = _head_inputs(model)
    try:
        generate(model, prompts, n, pool=pool)
    finally:
        handle.remove()
    assert len(shapes) == n  # the prompt pass and n - 1 cached steps, each through the head once
    assert all(s[:2] == (len(prompts), 1) for s in shapes), shapes


def test_last_logits_equal_the_full_forwards_last_position_with_left_padding():
    model = _model(2)
    ids_BT = torch.tensor([[1, 1, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask_BT = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos_BT = (mask_BT.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        full_BTV = model(ids_BT, attention_mask=mask_BT, position_ids_BT=pos_BT)
        last_B1V = last_logits(model, ids_BT, attention_mask=mask_BT, position_ids_BT=pos_BT)
    assert last_B1V.shape == (2, 1, model.config.vocab_size)
    torch.testing.assert_close(last_B1V, full_BTV[:, -1:])


def test_generative_eval_prompt_pass_never_makes_logits_at_every_position():
    from tokenizers import Tokenizer as HFTokenizer

    from emo_slice.eval.generative import generate_until
    from emo_slice.io.tokenizer import Tokenizer, byte_tokenizer_json

    model = _model(3, vocab_size=256)
    tok = Tokenizer(HFTokenizer.from_str(byte_tokenizer_json()), eos_token_id=0, pad_token_id=1)
    prompts = [[65, 66, 67, 68, 69, 70], [71, 72]]
    shapes, handle = _head_inputs(model)
    try:
        outs = generate_until(model, tok, prompts, [[], []], 6)
    finally:
        handle.remove()
    assert shapes and all(s[:2] == (2, 1) for s in shapes), shapes
    for p, o in zip(prompts, outs):  # and the stop-watching wrapper still decodes greedily
        want = _greedy_full_forward(model, p, len(o))[len(p) :]
        stop = want.index(0) + 1 if 0 in want else len(want)
        assert o[:stop] == want[:stop]
