"""examples/pool_causality.py: its first-half pool is causal (no later token changes a scored token's routing)
while eval's whole-window pool is not, and a pool of every routed expert is no pool at all."""

import sys

import pytest
import torch
from conftest import load_example, random_model

from emo_slice.model.generation import prompt_pools


def _windows(model, T=40, P=2):
    """Two windows of T tokens equal in their first 25 and different after (the second ends in one token
    repeated, the first token found that moves the whole window's pool), and the targets at 20..24."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(1, 64, (T + 1,), generator=g).tolist()
    pool_a = prompt_pools(model, [a[:T]], P)
    for x in range(1, 64):
        b = a[:26] + [x] * (T - 25)
        if any(not torch.equal(u, v) for u, v in zip(pool_a, prompt_pools(model, [b[:T]], P))):
            return a[:T], b[:T], list(range(20, 25)), a[21:26]
    raise AssertionError("no tail moves the whole window's pool: make the test model more sensitive")


def test_first_half_pool_sees_no_later_token():
    pc, model = load_example("pool_causality"), random_model(seed=1)
    ia, ib, pred, tgt = _windows(model)
    assert ia[:26] == ib[:26] and ia[26:] != ib[26:]
    with torch.no_grad():
        causal = [pc.second_half_nll(model, i, pred, tgt, 2, causal=True) for i in (ia, ib)]
        window = [pc.second_half_nll(model, i, pred, tgt, 2, causal=False) for i in (ia, ib)]
    assert causal[0] == causal[1]  # the pool comes from tokens 0..19, attention is causal: bit-equal
    assert window[0] != window[1]  # the whole window's pool moved with its last tokens, and so did the scores


def test_a_pool_of_every_routed_expert_is_no_pool():
    pc, model = load_example("pool_causality"), random_model(seed=2)
    ia, _, pred, tgt = _windows(random_model(seed=1))
    with torch.no_grad():
        free = pc.second_half_nll(model, ia, pred, tgt, None, causal=False)
        for causal in (False, True):
            assert abs(pc.second_half_nll(model, ia, pred, tgt, 8, causal=causal) - free) < 1e-4


@pytest.mark.parametrize(
    "bad,needle",
    [
        ({"--emo": "MISSING"}, "no checkpoint folder"),
        ({"--valid": "EMPTY"}, "holds no records"),
        ({"--valid": "NOFILES"}, "no *.jsonl files"),
        ({"--pools": "8,x"}, "positive integers"),
        ({"--pools": "0"}, "positive integers"),
    ],
)
def test_bad_input_is_one_line(bad, needle, tiny_ckpt, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jsonl").write_text("")
    (tmp_path / "nofiles").mkdir()
    where = {"MISSING": tmp_path / "missing", "EMPTY": tmp_path / "empty", "NOFILES": tmp_path / "nofiles"}
    args = {"--emo": tiny_ckpt, "--standard": tiny_ckpt, "--valid": tmp_path / "empty", "--pools": "8"}
    args.update({k: where.get(v, v) for k, v in bad.items()})
    monkeypatch.setattr(sys, "argv", ["pool_causality.py", *[str(x) for kv in args.items() for x in kv]])
    with pytest.raises(SystemExit) as e:
        load_example("pool_causality").main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and needle in err and err.count("\n") == 1
