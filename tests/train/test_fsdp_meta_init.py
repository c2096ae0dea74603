"""FSDP2 runs build the model on the meta device and fill only each rank's shards (train/meta_init.py): the
weights equal the single-process init bit for bit, and no rank ever holds the whole model.

Two CPU ranks over gloo (as in test_pretrain_dcp.py); every check runs inside the ranks and fails the test."""

import pytest
import torch
from conftest import free_port, join_gloo, tiny_train_config, word_corpus

from emo_slice.model.modeling import EmoForCausalLM, init_weights
from emo_slice.model.presets import preset


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return word_corpus(tmp_path_factory.mktemp("corpus") / "train.jsonl", 60)


def _gathered(model) -> dict[str, torch.Tensor]:
    """Every parameter as a whole tensor (all-gathered from the ranks' shards), names as named_parameters."""
    return {k: p.full_tensor() for k, p in model.named_parameters()}


def _assert_same(got: dict, want: dict, what: str) -> None:
    assert list(got) == list(want), what
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), f"{what}: {k}"


class _MetaWatch:
    """A shard function around wrap_model that records whether the model it gets holds meta tensors only."""

    def __init__(self, wrap):
        self.wrap, self.seen = wrap, []

    def __call__(self, model, **kw):
        self.seen.append(all(p.is_meta for p in model.parameters()))
        return self.wrap(model, **kw)


def _check_split_rule(rank):
    """copy_shard splits as FSDP2 does, uneven and empty shards included: parameters of 1, 5 and 9 rows."""
    from torch.distributed.fsdp import fully_shard

    from emo_slice.train.meta_init import copy_shard

    with torch.device("meta"):
        m = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Linear(3, 5), torch.nn.Linear(2, 9))
    fully_shard(m)
    m.to_empty(device="cpu")
    g = torch.Generator().manual_seed(7)
    full = {k: torch.randn(p.shape, generator=g) for k, p in m.named_parameters()}
    with torch.no_grad():
        for k, p in m.named_parameters():
            copy_shard(p, full[k])
    assert m[0].weight.to_local().shape[0] == (1 if rank == 0 else 0)  # rank 1 holds an empty shard
    _assert_same(_gathered(m), full, "split rule")


def _check_build_sharded(rank):
    """build_sharded + fill_random == init_weights on the whole model, tied embeddings too; built on meta."""
    from emo_slice.train.distributed import wrap_model
    from emo_slice.train.meta_init import build_sharded, fill_random

    for tie in (False, True):
        mcfg = preset("tiny", tie_word_embeddings=tie)
        watch = _MetaWatch(wrap_model)
        shard = lambda m: watch(m, fsdp=True, device=torch.device("cpu"))  # noqa: E731
        model = build_sharded(mcfg, shard, torch.device("cpu"), fill_random(0.02, 5))
        assert watch.seen == [True], "the model was not on the meta device when it was sharded"
        local = sum(p.to_local().numel() for p in model.parameters())
        total = sum(p.numel() for p in model.parameters())
        assert local < 0.6 * total  # this rank holds about half
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
        ref = init_weights(EmoForCausalLM(mcfg), 0.02, 5)
        _assert_same(_gathered(model), dict(ref.named_parameters()), f"tie={tie}")


def _check_trainer(rank, corpus, root, ckpt):
    """The trainer's FSDP2 model: the fresh init of one process, and --init-from's weights, both built on meta."""
    import emo_slice.train.trainer as trainer_mod
    from emo_slice.io.loading import load_model

    watch = _MetaWatch(trainer_mod.wrap_model)
    trainer_mod.wrap_model = watch
    try:
        t = trainer_mod.Trainer(tiny_train_config(corpus, f"{root}/fresh", fsdp=True, seed=3, init_std=0.05))
        ref = init_weights(EmoForCausalLM(t.mcfg), 0.05, 3)
        _assert_same(_gathered(t.raw), dict(ref.named_parameters()), "trainer fresh init")
        assert t.raw.training and t.model is t.raw
        t = trainer_mod.Trainer(tiny_train_config(corpus, f"{root}/init", fsdp=True, init_from=ckpt))
        ref = load_model(ckpt, dtype=torch.float32)
        _assert_same(_gathered(t.raw), dict(ref.named_parameters()), "trainer --init-from")
        assert not t.raw.training  # eval mode, as init_weights_from leaves the model
    finally:
        trainer_mod.wrap_model = watch.wrap
    assert watch.seen == [True, True]


def _worker(rank, world, port, corpus, root, ckpt):
    import torch.distributed as dist

    join_gloo(rank, world, port)
    try:
        _check_split_rule(rank)
        _check_build_sharded(rank)
        _check_trainer(rank, corpus, root, ckpt)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_fsdp_init_on_meta_equals_one_process_init(corpus, tiny_ckpt, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, free_port(), str(corpus), str(tmp_path), str(tiny_ckpt)), nprocs=2)
