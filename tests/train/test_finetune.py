"""finetune: answer-only loss computed by hand, frozen parts bit-identical and outside the optimizer, exact resume,
step 0, the round trip through merge, and bad input refused in one line."""

import json

import pytest
import torch
from conftest import assert_one_line_error, free_port, invoke, join_gloo, random_model, train_log

from emo_slice.io.build import random_checkpoint
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import load_model
from emo_slice.io.tokenizer import ByteTokenizer
from emo_slice.model.hf_names import EXPERT_KEY
from emo_slice.slicing.extract import MANIFEST, extract
from emo_slice.slicing.select import SlicePlan
from emo_slice.train.finetune import FinetuneTrainer
from emo_slice.train.finetune_config import FinetuneConfig
from emo_slice.train.sft_data import IGNORE, SFTExample, encode_segments
from emo_slice.train.sft_step import collate, masked_ce_sum
from emo_slice.train.training_state import read_manifest

KEPT = [[1, 3, 4, 8], [0, 5, 6, 8]]


def _tensors(folder) -> dict[str, torch.Tensor]:
    ck = Checkpoint(folder)
    return {n: ck.get(n) for n in ck.names()}


def _task(path, n=24):
    """A multiple-choice task file: a colour question, three choices."""
    with open(path, "w") as f:
        for i in range(n):
            item = {
                "id": str(i),
                "context": f"Q{i % 5}: colour?",
                "choices": [" red", " blue", " green"],
                "label": i % 3,
            }
            f.write(json.dumps(item) + "\n")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    full = random_checkpoint(root / "full", "tiny", seed=2)
    sl = root / "slice"
    extract(full, SlicePlan(kept=KEPT, method="experts", keep=4), sl)
    return root, full, sl, _task(root / "task.jsonl")


def _cfg(sl, task, out, **kw):
    base = dict(model=str(sl), tasks=[str(task)], out=str(out), batch_size=4, steps=3, lr=1e-2, progress=False)
    return FinetuneConfig(**{**base, **kw})


def test_answer_only_loss_is_exact_by_hand():
    model = random_model(seed=1, vocab_size=256)
    tok = ByteTokenizer(0, 1)
    examples = [("Q: 2+2 =", " 4"), ("hello ", "world")]  # the second prompt's trailing space joins the answer
    encoded = [
        encode_segments(tok, SFTExample(str(i), ((p, False), (a, True))).segments) for i, (p, a) in enumerate(examples)
    ]
    inp, tgt = collate(encoded, pad_id=1)
    with torch.no_grad():
        got = masked_ce_sum(model(inp), tgt).double() / (tgt != IGNORE).sum()
        total, n = 0.0, 0
        for prompt, answer in (("Q: 2+2 =", " 4"), ("hello", " world")):
            ids = list(prompt.encode()) + list(answer.encode()) + [0]  # EOS appended
            lp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)
            for pos in range(len(prompt.encode()) - 1, len(ids) - 1):  # predicts the answer's bytes and EOS
                total -= float(lp[pos, ids[pos + 1]])
                n += 1
    assert n == int((tgt != IGNORE).sum()) == 2 + 6 + 2
    assert abs(float(got) - total / n) < 1e-5 * abs(total / n)


def test_trainer_loss_is_the_answer_loss_of_the_global_batch(setup, tmp_path):
    root, full, sl, task = setup
    t = FinetuneTrainer(_cfg(sl, task, tmp_path / "run", micro_batch_size=1, steps=1))
    model = load_model(sl, dtype=torch.float32)
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(4):  # the first step's four examples, one per micro-batch
            ids, trained = t.data.encoded[t.data.index(i)]
            lp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].double(), -1)
            for pos in range(len(ids) - 1):
                if trained[pos + 1]:
                    total -= float(lp[pos, ids[pos + 1]])
                    n += 1
    rec = t.train_step()
    assert rec["targets"] == n and abs(rec["loss"] - total / n) < 1e-5


def _kind(name: str, R: int) -> str:
    m = EXPERT_KEY.match(name)
    if m:
        return "shared" if int(m.group(2)) >= R else "routed"
    return "router" if name.endswith("mlp.gate.weight") else "other"


LEARNS = {
    "routed": {"routed"},
    "routed+shared": {"routed", "shared"},
    "routed+shared+router": {"routed", "shared", "router"},
    "all": {"routed", "shared", "router", "other"},
}


@pytest.mark.parametrize("part", list(LEARNS))
def test_frozen_parts_bit_identical_and_never_in_the_optimizer(setup, tmp_path, part):
    root, full, sl, task = setup
    t = FinetuneTrainer(_cfg(sl, task, tmp_path / "run", train=part))
    learning = {id(p) for p in t.raw.parameters() if p.requires_grad}
    in_opt = {id(p) for g in t.optimizer.param_groups for p in g["params"]}
    assert in_opt == learning and learning
    final = t.run()
    assert {id(p) for p in t.optimizer.state} <= learning
    names = {n for g in read_manifest(final)["param_groups"] for n in g["params"]}
    assert names == {n for n, p in t.raw.named_parameters() if p.requires_grad}
    before, after = _tensors(sl), _tensors(final)
    assert _tensors(tmp_path / "run" / "step-000000").keys() == before.keys()
    R = 3  # routed experts of the slice (then its shared one)
    for name, b in before.items():
        if _kind(name, R) in LEARNS[part]:
            assert not torch.equal(after[name], b), name
        else:
            assert after[name].view(torch.uint8).numpy().tobytes() == b.view(torch.uint8).numpy().tobytes(), name
    for name, b in _tensors(tmp_path / "run" / "step-000000").items():
        assert torch.equal(b, before[name]), name  # step 0 holds the weights training starts from
    assert json.loads((final / MANIFEST).read_text()) == json.loads((sl / MANIFEST).read_text())
    assert json.loads((final / "finetune.json").read_text())["train"] == part


def test_resume_continues_exactly_with_split_experts(setup, tmp_path):
    root, full, sl, task = setup
    whole = FinetuneTrainer(_cfg(sl, task, tmp_path / "a", train="routed", steps=4)).run()
    FinetuneTrainer(_cfg(sl, task, tmp_path / "b", train="routed", steps=4, stop_after=2, save_every=0)).run()
    resumed = FinetuneTrainer(_cfg(sl, task, tmp_path / "b", train="routed", steps=4, resume=True)).run()
    a, b = _tensors(whole), _tensors(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert train_log(tmp_path / "a") == train_log(tmp_path / "b")


def test_cli_finetune_then_merge_puts_the_tuned_experts_back(setup, tmp_path):
    root, full, sl, task = setup
    run = tmp_path / "run"
    r = invoke(
        "finetune", sl, "--task", task, "--out", run, "--steps", "2", "--batch-size", "4", "--lr", "1e-2", "--json"
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["steps"] == 2 and summary["before"]["step"] == 0 and summary["eval"]["step"] == 2
    assert "val_acc" in summary["eval"] and summary["eval"]["val_items"] == round(0.1 * 24)
    r = invoke("merge", full, "--slice", run / "final", "--out", tmp_path / "merged")
    assert r.returncode == 0, r.stderr
    m, tuned = _tensors(tmp_path / "merged"), _tensors(run / "final")
    name = "model.layers.1.mlp.experts.5.up_proj.weight"  # kept id 5 is position 1 of layer 1
    assert torch.equal(m[name], tuned["model.layers.1.mlp.experts.1.up_proj.weight"])
    assert json.loads((tmp_path / "merged" / "merge.json").read_text())["slice"]["finetune"]["step"] == 2
    r = invoke("merge", full, "--slice", run / "step-000000", "--out", tmp_path / "untuned")
    assert r.returncode == 0, r.stderr
    f = _tensors(full)
    assert all(torch.equal(v, f[n]) for n, v in _tensors(tmp_path / "untuned").items())


def test_bad_inputs_one_line_nothing_written(setup, tmp_path):
    import datasets

    root, full, sl, task = setup
    only_test = tmp_path / "only-test"
    rows = {"context": ["a"], "choices": [["b", "c"]], "label": [0]}
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(only_test))
    r = invoke("finetune", sl, "--task", only_test, "--out", tmp_path / "o1")
    assert_one_line_error(r, "train")
    r = invoke("finetune", sl, "--task", task, "--out", sl / "run")
    assert_one_line_error(r, "inside the input")
    r = invoke("finetune", sl, "--task", "arc_easy", "--split", "test", "--out", tmp_path / "o2")
    assert_one_line_error(r, "scored")
    r = invoke("finetune", sl, "--task", task, "--out", tmp_path / "o3", "--train", "routed", "--fsdp")
    assert_one_line_error(r, "--fsdp")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3)) and not (sl / "run").exists()


def test_multiple_choice_example_is_the_request_eval_scores():
    from emo_slice.data.sources import MCItem
    from emo_slice.eval.encoding import encode_item
    from emo_slice.train.corpus import train_tokenizer
    from emo_slice.train.sft_data import from_mc

    texts = ["the quick brown fox jumps over the lazy dog", "foxes and dogs are quick animals"] * 20
    tok = train_tokenizer(texts, 300)
    item = MCItem("1", "Question: what jumps? Answer: the ", ["quick fox", "lazy dog"], 0, target_delimiter="")
    enc = encode_item(tok, item, 512)
    ids, trained = encode_segments(tok, from_mc(item).segments)
    assert ids == enc.ctx + enc.conts[0] + [tok.eos_token_id]
    assert trained == [False] * len(enc.ctx) + [True] * (len(enc.conts[0]) + 1)


def test_chat_conversations_train_on_assistant_turns_only(tmp_path):
    from emo_slice.errors import DataError
    from emo_slice.io.chat import read_chat_template
    from emo_slice.train.sft_data import load_sft_task

    template = (
        "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "</s>"}))
    chat = tmp_path / "chat.jsonl"
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    msgs += [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    chat.write_text(json.dumps({"messages": msgs}) + "\n")
    task = load_sft_task(str(chat), template=read_chat_template(tmp_path))
    segs = task.examples[0].segments
    assert [t for t, trained in segs if trained] == ["hello\n", "4\n"]
    assert "".join(t for t, _ in segs) == "<|user|>hi\n<|assistant|>hello\n<|user|>2+2?\n<|assistant|>4\n"
    with pytest.raises(DataError, match="no chat template"):
        load_sft_task(str(chat), template=None)
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"  # the sandbox refuses Python internals
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": evil}))
    with pytest.raises(DataError, match="chat template"):
        load_sft_task(str(chat), template=read_chat_template(tmp_path))


def _ft_worker(rank, world, port, sl, task, root):
    import torch.distributed as dist

    join_gloo(rank, world, port)
    for name, fsdp in (("ddp", False), ("fsdp", True)):
        FinetuneTrainer(_cfg(sl, task, f"{root}/{name}", train="routed+shared", fsdp=fsdp, micro_batch_size=1)).run()
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_train_as_one_process(setup, tmp_path):
    """DDP and FSDP2 with frozen parameters: the answer loss of each step, its gradient norm and the weights
    equal one process's on the same examples (every answer token weighs the same across ranks)."""
    import torch.multiprocessing as mp

    root, full, sl, task = setup
    mp.spawn(_ft_worker, args=(2, free_port(), str(sl), str(task), str(tmp_path)), nprocs=2)
    one = FinetuneTrainer(_cfg(sl, task, tmp_path / "one", train="routed+shared", micro_batch_size=1)).run()
    want = [r for r in train_log(tmp_path / "one") if r["kind"] == "train"]
    for name in ("ddp", "fsdp"):
        got = [r for r in train_log(tmp_path / name) if r["kind"] == "train"]
        for a, b in zip(got, want, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["targets"] == b["targets"], name
            assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4), name
        mine, theirs = _tensors(tmp_path / name / "final"), _tensors(one)
        assert all(torch.allclose(mine[n], theirs[n], atol=1e-5) for n in theirs), name


def test_initial_weights_are_recorded_kept_by_pruning_and_replaced_by_overwrite(setup, tmp_path):
    from emo_slice.train.checkpointing import recorded_checkpoints

    root, full, sl, task = setup
    out = tmp_path / "run"
    FinetuneTrainer(_cfg(sl, task, out, steps=4, save_every=1, keep_last=1)).run()
    periodic = sorted(p.name for p in out.glob("step-*"))
    assert periodic == ["step-000000", "step-000003"] and (out / "final").is_dir()  # the newest and the initial
    assert set(periodic) <= set(recorded_checkpoints(out))  # the run's own: a resume does not refuse them
    (out / "step-000000-mybackup").mkdir()  # a user's folder: --overwrite must refuse to delete it
    with pytest.raises(Exception, match="step-000000-mybackup|delete it yourself"):
        FinetuneTrainer(_cfg(sl, task, out, steps=2, overwrite=True)).run()
    assert (out / "step-000000-mybackup").is_dir()
    (out / "step-000000-mybackup").rmdir()
    FinetuneTrainer(_cfg(sl, task, out, steps=2, overwrite=True)).run()  # only what the run wrote: replaced
    assert (out / "step-000000").is_dir() and not (out / "step-000003").exists()
