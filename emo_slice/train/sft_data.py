"""Supervised fine-tuning data: task items -> (prompt, answer) texts -> token ids with the answer marked.

An example is a list of text segments, each trained (the loss covers its tokens) or not (prompt, masked):

- a multiple-choice item: its context, then target_delimiter + the gold choice (trained): exactly the request
  `emo-slice eval` scores for the gold (an item with per-choice contexts, Winogrande: the gold's context);
- a generative item (`gsm8k`'s train split, or a JSONL of {"prompt", "target"}): prompt, then the target
  (trained), a space between them when neither has one (as AllenAI's EMO fine-tuning joins them); GSM8K's
  answer is trained as chain of thought ending "The answer is N." (what gsm8k_cot's strict-match reads);
- a JSONL of {"prompt", "completion"}: the two verbatim;
- a JSONL of {"messages": [{"role", "content"}, ...]}: rendered with the tokenizer's chat template
  (io/chat.py); every assistant turn is trained, the rest masked.

Tokens (`encode_segments`): as lm-evaluation-harness encodes a request, trailing whitespace of a masked
segment moves to the trained one after it, and a segment's tokens are encode(text so far)[len(encode(text
before it)):]; an example with no prompt starts with EOS (lm-eval's empty context). EOS is appended and
trained (the model learns to stop) unless the example already ends with it. An example longer than the
context (seq_len + 1 tokens) loses prompt tokens from the left; one whose trained tokens do not fit is
dropped and counted.

Which split: a built-in benchmark, a saved DatasetDict or a cached Hub dataset gives its `train` split (none:
refused); a JSONL file or a single-split dataset is taken whole as training items. A seeded share of the
items is held out (`split_heldout`) for `--eval-every`: the scored split of a benchmark is never read.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from emo_slice.data.benchmarks import is_benchmark, parse_spec
from emo_slice.data.benchmarks.loading import MissingData, open_source
from emo_slice.data.benchmarks.registry import resolve
from emo_slice.data.gen_tasks import GSM8K_HUB, is_generative
from emo_slice.data.sources import MCItem, read_records
from emo_slice.data.tasks import load_items, load_tasks, source_of, task_name
from emo_slice.errors import DataError, UsageError
from emo_slice.io.chat import render_chat

IGNORE = -100  # the target id of a masked position (never a token id)


@dataclass(frozen=True)
class SFTExample:
    id: str
    segments: tuple[tuple[str, bool], ...]  # (text, trained)
    item: MCItem | None = None  # the multiple-choice item it came from (scored when held out)


@dataclass
class SFTTask:
    name: str
    spec: str
    kind: str  # multiple_choice | generative | pairs | chat
    examples: list[SFTExample]


# ---------------------------------------------------------------------------------------------
# Items -> examples
# ---------------------------------------------------------------------------------------------


def from_mc(item: MCItem) -> SFTExample:
    context = item.contexts[item.label] if item.contexts is not None else item.context
    return SFTExample(item.id, ((context, False), (item.target_delimiter + item.choices[item.label], True)), item)


def from_generative(id_: str, prompt: str, target: str) -> SFTExample:
    gap = "" if not prompt or not target or prompt[-1].isspace() or target[0].isspace() else " "
    return SFTExample(id_, ((prompt, False), (gap + target, True)))


def gsm8k_chain(answer: str) -> str:
    """A GSM8K answer as the chain of thought gsm8k_cot expects: calculator notes <<...>> removed and the final
    '#### N' written 'The answer is N.'."""
    reasoning, _, final = answer.rpartition("####")
    text = re.sub(r"<<[^>]*>>", "", reasoning).strip()
    return f"{text} The answer is {final.strip()}.".strip()


def _text(rec: dict, key: str, where: str) -> str:
    value = rec.get(key)
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} must be text, not {type(value).__name__}; fix or drop that record")
    return value


def _pairs(records: list[dict], spec: str) -> list[SFTExample]:
    return [
        SFTExample(
            str(r.get("id", i)),
            ((_text(r, "prompt", f"{spec}:{i + 1}"), False), (_text(r, "completion", f"{spec}:{i + 1}"), True)),
        )
        for i, r in enumerate(records)
    ]


def _chat(records: list[dict], spec: str, template) -> list[SFTExample]:
    if template is None:
        raise DataError(
            f"--task {spec} holds chat conversations ('messages') but the model's tokenizer has no chat template "
            "(tokenizer_config.json chat_template or chat_template.jinja); give prompt/completion pairs instead"
        )
    source, tokens = template
    out = []
    for i, r in enumerate(records):
        msgs, where = r.get("messages"), f"--task {spec}:{i + 1}"
        if not isinstance(msgs, list) or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in msgs
        ):
            raise DataError(f"{where}: 'messages' must be a list of {{role, content}} texts")
        segments, done = [], ""
        for k, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            prompt = render_chat(source, tokens, msgs[:k], add_generation_prompt=True)
            full = render_chat(source, tokens, msgs[: k + 1])
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError(f"{where}: the chat template does not render the conversation turn by turn")
            segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        if not any(t for t, trained in segments if trained):
            raise DataError(f"{where}: no assistant turn to train on")
        out.append(SFTExample(str(r.get("id", i)), tuple(segments)))
    return out


def _builtin(spec: str, split: str) -> SFTTask | None:
    """A built-in benchmark's train split (refused when it is the benchmark's scored split), or None."""
    if is_generative(spec):
        return _gsm8k(spec, split)
    if not is_benchmark(spec):
        return None
    for b in [resolve(parse_spec(spec)[0])]:
        if b.split == split:
            raise UsageError(f"--task {spec}: split {split!r} is the one {b.name} is scored on; train on 'train'")
    tasks = load_tasks(spec, split=split)
    return SFTTask(parse_spec(spec)[0], spec, "multiple_choice", [from_mc(it) for t in tasks for it in t.items])


def _gsm8k(spec: str, split: str) -> SFTTask:
    if split == GSM8K_HUB[2]:
        raise UsageError(f"--task {spec}: split {split!r} is the one gsm8k is scored on; train on 'train'")
    _, eq, folder = spec.partition("=")
    src = open_source("gsm8k", GSM8K_HUB[0], folder if eq else None)
    try:
        rows = src.rows(GSM8K_HUB[1], split)
    except MissingData as e:
        raise DataError(f"--task {spec} has no {split!r} split to train on ({e})") from None
    examples = [
        from_generative(str(i), f"Q: {_text(r, 'question', spec)}\nA:", gsm8k_chain(_text(r, "answer", spec)))
        for i, r in enumerate(rows)
    ]
    return SFTTask("gsm8k", spec, "generative", examples)


def load_sft_task(spec: str, split: str = "train", template=None) -> SFTTask:
    """The training examples of one --task spec (see the module docstring); template: the model's chat template
    (io/chat.read_chat_template), needed for conversations only."""
    task = _builtin(spec, split)
    if task is not None:
        return task
    src, name = source_of(spec), task_name(spec)
    records = read_records(src, split if not Path(src).is_file() else None, "--task")
    first = records[0]
    if "messages" in first:
        return SFTTask(name, spec, "chat", _chat(records, spec, template))
    if "prompt" in first and "completion" in first:
        return SFTTask(name, spec, "pairs", _pairs(records, spec))
    if "prompt" in first and "target" in first:
        where = f"--task {spec}"
        ex = [
            from_generative(str(r.get("id", i)), _text(r, "prompt", where), _text(r, "target", where))
            for i, r in enumerate(records)
        ]
        return SFTTask(name, spec, "generative", ex)
    items, _ = load_items(spec, None, "auto", split if not Path(src).is_file() else None)
    return SFTTask(name, spec, "multiple_choice", [from_mc(it) for it in items])


def split_heldout(examples: list[SFTExample], share: float, seed: int) -> tuple[list, list]:
    """(training, held-out) examples: a seeded `share` held out (at least one when share > 0), never trained on."""
    if share <= 0:
        return list(examples), []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n = max(1, round(share * len(examples)))
    if n >= len(examples):
        raise DataError(f"{len(examples)} training items leave none to train on after holding out {share:.0%}")
    held = set(order[:n])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


# ---------------------------------------------------------------------------------------------
# Examples -> token ids
# ---------------------------------------------------------------------------------------------


def _move_space(segments) -> list[tuple[str, bool]]:
    """lm-eval's split: trailing whitespace of a masked segment belongs to the trained segment after it."""
    out = [list(s) for s in segments if s[0]]
    for a, b in zip(out, out[1:]):
        if not a[1] and b[1]:
            n = len(a[0]) - len(a[0].rstrip())
            if n and a[0].strip():
                a[0], b[0] = a[0][:-n], a[0][-n:] + b[0]
    return [(t, trained) for t, trained in out]


def encode_segments(tok, segments) -> tuple[list[int], list[bool]]:
    """(ids, trained per id) of an example's segments, EOS appended (see the module docstring)."""
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    segments = _move_space(segments)
    ids: list[int] = []
    trained: list[bool] = []
    text = ""
    if segments and segments[0][1]:
        ids, trained = [eos], [False]  # no prompt: the first answer token follows EOS, as lm-eval scores it
    for seg, train in segments:
        new = tok.encode(seg) if not text else tok.encode(text + seg)[len(tok.encode(text)) :]
        ids += new
        trained += [train] * len(new)
        text += seg
    if not ids or ids[-1] != eos:
        ids.append(eos)
        trained.append(True)
    return ids, trained


def fit(ids: list[int], trained: list[bool], max_len: int) -> tuple[list[int], list[bool]] | None:
    """Keep the last max_len + 1 tokens when every trained one is among them (the prompt loses its start);
    None when a trained token would be cut."""
    if len(ids) <= max_len + 1:
        return ids, trained
    cut = len(ids) - (max_len + 1)
    if any(trained[: cut + 1]):  # position cut (the first kept) is an input only: its token is not a target
        return None
    return ids[cut:], trained[cut:]
