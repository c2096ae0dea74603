"""Checkpoints declare the context they were trained for; eval and profile stay inside it; `--pool` routes
each document inside its own pool exactly as pretraining does; generation with a pool keeps the KV cache exact."""

import json
import random

import pytest
import torch
from conftest import assert_one_line_error, invoke, random_model

from emo_slice.errors import UsageError
from emo_slice.eval.requests import lm_rows
from emo_slice.eval.runner import Runner
from emo_slice.eval.scoring import score_rows
from emo_slice.model.generation import generate, prompt_pools, restricted_routing
from emo_slice.train.config import train_preset
from emo_slice.train.trainer import Trainer

SEQ = 48  # the trained sequence length (the tiny preset's architecture says 512)
POOL = 3  # tiny: 8 routed experts, 2 routed per token
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(trainer, final checkpoint, corpus, work dir): an EMO model trained 3 steps on 48-token windows."""
    root = tmp_path_factory.mktemp("ctx")
    rng = random.Random(0)
    corpus = root / "train.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(5, 40)))}) + "\n" for _ in range(120))
    )
    cfg = train_preset(
        "tiny", data=str(corpus), out=str(root / "run"), seq_len=SEQ, batch_size=4, steps=3, warmup_steps=1,
        eval_every=0, save_every=0, eval_batches=1, progress=False,
    )  # fmt: skip
    trainer = Trainer(cfg)
    return trainer, trainer.run(), corpus, root


@pytest.mark.slow  # pretrains a model (module fixture)
def test_checkpoint_says_the_trained_sequence_length(run):
    _, final, _, _ = run
    assert json.loads((final / "config.json").read_text())["max_position_embeddings"] == SEQ
    assert json.loads((final / "train_config.json").read_text())["seq_len"] == SEQ
    set_by_user = train_preset("tiny", seq_len=SEQ, model={"max_position_embeddings": 256})
    assert set_by_user.model_config().max_position_embeddings == 256
    with pytest.raises(UsageError, match="max_position_embeddings=16 is below --seq-len 48"):
        train_preset("tiny", seq_len=SEQ, model={"max_position_embeddings": 16}).model_config()


@pytest.mark.slow  # pretrains a model (module fixture)
def test_eval_and_profile_refuse_windows_longer_than_the_context(run):
    _, final, corpus, root = run
    r = invoke("eval", final, "--lm", corpus, "--max-length", str(SEQ + 1))
    assert_one_line_error(r, "--max-length 49", f"max_position_embeddings {SEQ}")
    r = invoke("profile", final, "--examples", corpus, "--max-length", str(SEQ + 1), "--out", root / "p.json")
    assert_one_line_error(r, "--max-length 49", f"max_position_embeddings {SEQ}")
    assert not (root / "p.json").exists()


@pytest.mark.slow  # pretrains a model (module fixture)
def test_eval_and_profile_default_to_the_trained_context(run):
    _, final, corpus, root = run
    r = invoke("eval", final, "--lm", corpus, "--limit", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"]["lm:train"]["windows_cut"] > 0  # documents longer than 48 are cut
    few = root / "few.txt"
    few.write_text(" ".join(WORDS * 8))  # one document of about 400 bytes: cut into rows of 48
    r = invoke("profile", final, "--examples", few, "--out", root / "d.json", "--pool", str(POOL), "--json")
    assert r.returncode == 0, r.stderr
    prof = json.loads((root / "d.json").read_text())
    assert prof["inputs"]["max_length"] == SEQ and prof["settings"]["pool"] == POOL


def _routings(model, fn):
    """What fn() runs, with every layer's Routing captured (layer order)."""
    got, hooks = [], [layer.mlp.register_forward_hook(lambda m, i, o: got.append(o[1])) for layer in model.model.layers]
    try:
        out = fn()
    finally:
        for h in hooks:
            h.remove()
    return out, got


@pytest.mark.slow  # pretrains a model (module fixture)
@torch.no_grad()
def test_pool_routing_equals_the_trainers_pool_routing(run):
    trainer, final, corpus, _ = run
    doc = json.loads(corpus.read_text().splitlines()[3])["text"][: SEQ - 1]
    runner = Runner(str(final), pool=POOL)
    rows, _ = lm_rows(runner.tokenizer, [doc], SEQ)  # one row: EOS + the document (one pool segment)
    scored, eval_routing = _routings(runner.model, lambda: score_rows(runner, rows))
    inp_BT = torch.tensor([rows[0].ids])
    trainer.runner.pool = (POOL, POOL)  # the training draw, with P_min = P_max = POOL
    # routing is what is compared: training's intra-document attention also hides the row's leading EOS from
    # the document's tokens (eval rows attend to it), a separate, attention-only difference
    trainer.runner.doc_attn = False
    window_BT = torch.cat([inp_BT, inp_BT[:, -1:]], 1)  # the step's [B, T+1] window: inputs + next-token targets
    for pool in (
        trainer.runner.micro_batch(window_BT, 0, 0).pool,
        POOL,
    ):  # training step's draw, and training-time evaluation's
        out = trainer._forward(inp_BT, pool)
        for ev, tr in zip(eval_routing, out["routing"]):
            assert torch.equal(ev.experts_NK, tr.experts_NK)
            assert torch.equal(torch.isinf(ev.masked_logits_NR), torch.isinf(tr.masked_logits_NR))
            assert int(torch.isinf(tr.masked_logits_NR[0]).sum()) == 8 - POOL  # the pool really restricts
            torch.testing.assert_close(ev.masked_logits_NR, tr.masked_logits_NR)
        logp = torch.log_softmax(out["logits"][0].float(), -1)
        want = [float(logp[t, y]) for t, y in zip(rows[0].pred, rows[0].target)]
        assert scored[0][0] == pytest.approx(want, abs=1e-5)
    unpooled = score_rows(Runner(str(final)), rows)
    assert unpooled[0][0] != pytest.approx(scored[0][0], abs=1e-5)


@pytest.mark.slow  # pretrains a model (module fixture)
@torch.no_grad()
def test_pool_padding_does_not_join_a_documents_pool(run):
    _, final, corpus, _ = run
    runner = Runner(str(final), pool=POOL)
    lines = corpus.read_text().splitlines()
    short, long = (json.loads(lines[i])["text"][:n] for i, n in ((1, 10), (2, SEQ - 1)))
    rows, _ = lm_rows(runner.tokenizer, [short, long], SEQ)
    alone = score_rows(runner, rows[:1])[0][0]
    batched = score_rows(runner, rows)[0][0]  # short is right-padded to the long row's length
    assert batched == pytest.approx(alone, abs=1e-5)


# ---- generation -------------------------------------------------------------------------------------------


def _model():
    return random_model(3, std=0.3, eos_token_id=0, pad_token_id=1)


@torch.no_grad()
def test_pooled_generation_with_cache_equals_full_forwards_in_the_prompt_pool():
    model, prompt = _model(), torch.randint(2, 64, (10,), generator=torch.Generator().manual_seed(0)).tolist()
    got = generate(model, [prompt], 6, pool=POOL)[0].tolist()
    pools = prompt_pools(model, [prompt], POOL)
    ids = list(prompt)
    with restricted_routing(model, pools):  # no cache: every step recomputes the whole sequence
        first = model(torch.tensor([prompt]))[0, -1]
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    assert got == ids
    pooled = model(torch.tensor([prompt]), pool_size=POOL)[0, -1]  # the pool is the one a pooled forward picks
    torch.testing.assert_close(first, pooled)
    assert generate(model, [prompt], 6)[0].tolist() != got  # and the pool changes the continuation


def test_pooled_generation_batched_with_left_padding_equals_each_prompt_alone():
    model = _model()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(2, 64, (n,), generator=g).tolist() for n in (4, 9)]
    batch = generate(model, prompts, 5, pool=POOL)
    for b, p in enumerate(prompts):
        assert batch[b, 9 - len(p) :].tolist() == generate(model, [p], 5, pool=POOL)[0].tolist()


def test_generate_refuses_a_pool_smaller_than_the_routed_top_k(tiny_ckpt):
    assert_one_line_error(invoke("generate", tiny_ckpt, "--prompt", "hi", "--pool", "1"), "--pool 1", "at least 2")
