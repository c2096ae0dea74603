"""Scoring generative tasks (GSM8K, `--gen-task FILE`): greedy generation, answer extraction, exact match.

Generation mirrors lm-evaluation-harness's HF backend (`generate_until`): each prompt is encoded without
special tokens and cut from the left to max_length - max_new_tokens tokens; prompts are batched longest
first with left padding and continued greedily by `emo_slice.model.generation.generate` (KV cache); a
row ends at the tokenizer's EOS or once its decoded text holds a stop sequence, and its text (special
tokens skipped) is cut before the first occurrence of each stop sequence in turn. The answer is then read
out by the task's filters (lm-eval's `regex` + `take_first`) and compared with the gold by lm-eval's
`exact_match` (`exact_match_hf_evaluate`), one 0/1 score per item; the metric is their mean, under
lm-eval's names `exact_match,<filter>` with `exact_match_stderr,<filter>`.

Shape letters: the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

import math
import re
import string
import time

import torch

from emo_slice.data.gen_tasks import DEFAULT_MAX_NEW_TOKENS, GenTask, is_generative, load_gen_tasks
from emo_slice.errors import CheckpointError, DataError, UsageError
from emo_slice.io.checkpoint import Checkpoint
from emo_slice.io.loading import STREAMED, choose_placement, default_dtype
from emo_slice.model.generation import generate, last_logits

FALLBACK = "[invalid]"  # lm-eval RegexFilter's answer when nothing matches


# ---------------------------------------------------------------------------------------------
# lm-eval's answer extraction and exact match
# ---------------------------------------------------------------------------------------------


def regex_extract(text: str, pattern: str, group_select: int = 0, fallback: str = FALLBACK) -> str:
    """lm-eval's RegexFilter on one response: the `group_select`-th match of findall (a tuple of groups
    gives its first non-empty group), stripped; the fallback when nothing matches."""
    matches = re.findall(pattern, text)
    if not matches:
        return fallback
    m = matches[group_select]
    if isinstance(m, tuple):
        m = next((g for g in m if g), fallback)
    return m.strip()


def exact_match(
    prediction: str,
    reference: str,
    *,
    regexes_to_ignore: list[str] | None = None,
    ignore_case: bool = False,
    ignore_punctuation: bool = False,
    ignore_numbers: bool = False,
) -> bool:
    """lm-eval's exact_match for one (prediction, reference): each regex removed from both, in order, then
    case, punctuation and digits dropped as asked, then string equality."""
    for rx in regexes_to_ignore or []:
        prediction, reference = re.sub(rx, "", prediction), re.sub(rx, "", reference)
    if ignore_case:
        prediction, reference = prediction.lower(), reference.lower()
    for chars, on in ((string.punctuation, ignore_punctuation), (string.digits, ignore_numbers)):
        if on:
            table = str.maketrans("", "", chars)
            prediction, reference = prediction.translate(table), reference.translate(table)
    return prediction == reference


def extract(task: GenTask, text: str) -> dict[str, str]:
    """The answer each filter of the task reads out of a continuation ("none": the stripped text)."""
    return {
        name: text.strip() if name == "none" else regex_extract(text, rx, group) for name, rx, group in task.filters
    }


def cut_at_stops(text: str, stops: list[str]) -> str:
    """lm-eval's post-processing: the text before each (non-empty) stop sequence in turn."""
    for s in stops:
        if s:
            text = text.split(s)[0]
    return text


# ---------------------------------------------------------------------------------------------
# Generation with per-row stop sequences
# ---------------------------------------------------------------------------------------------


def decode_new(tok, ids: list[int]) -> str:
    """A continuation's text: the ids before the first EOS, special tokens skipped (lm-eval's tok_decode)."""
    eos = tok.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    backend = getattr(tok, "backend", None)
    return backend.decode(ids, skip_special_tokens=True) if backend is not None else tok.decode(ids)


class _StopWatch:
    """The model as `generate()` sees it, watching each row's decoded continuation between steps: once it
    holds a stop sequence, the row's next logits allow only EOS, so `generate()` ends that row, and the
    batch once every row has ended. The text itself is cut afterwards (`cut_at_stops`).

    Each row ends as it would alone: lm-eval's stopping criterion ends a batch only when every row has met
    a stop, so with batches its rows run on past a stop that the final text (special tokens skipped) does
    not show; its default batch size 1 gives what this gives."""

    def __init__(self, model, tok, stops: list[list[str]], path: str = "the model"):
        self.model, self.config, self.tok, self.stops, self.path = model, model.config, tok, stops, path
        self.new: list[list[int]] = [[] for _ in stops]
        self.ended = [False] * len(stops)
        self.steps = 0

    def parameters(self):
        return self.model.parameters()

    def __call__(self, ids_BT: torch.Tensor, **kw) -> torch.Tensor:
        """Logits [B, 1, V] at the last position (all `generate()` reads), stopped rows forced to EOS."""
        eos = self.tok.eos_token_id
        if self.steps:  # ids_BT holds the token each row picked last step
            for b, t in enumerate(ids_BT[:, 0].tolist()):
                if not self.ended[b]:
                    self.new[b].append(t)
                    text = self.tok.decode(self.new[b])  # special tokens kept, as lm-eval's stop check sees them
                    self.ended[b] = t == eos or any(s and s in text for s in self.stops[b])
        self.steps += 1
        logits_B1V = last_logits(self.model, ids_BT, **kw)  # the prompt pass too: no [B, T, V] logits
        if not bool(torch.isfinite(logits_B1V).all()):
            raise CheckpointError(
                f"{self.path} gives non-finite logits while generating: its weights hold NaN or inf (a diverged "
                "training run?); no result is reported; check the model's training log"
            )
        rows = [b for b, e in enumerate(self.ended) if e]
        if rows and eos is not None:
            logits_B1V[rows, -1] = float("-inf")
            logits_B1V[rows, -1, eos] = 0.0
        return logits_B1V


def generate_until(
    model, tok, prompts: list[list[int]], stops: list[list[str]], max_new_tokens: int, path: str = "the model"
) -> list[list[int]]:
    """Greedy continuations (token ids) of one batch of prompts, each ended at EOS or a stop sequence."""
    ids = generate(
        _StopWatch(model, tok, stops, path),
        prompts,
        max_new_tokens,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    T = max(len(p) for p in prompts)
    return [ids[b, T:].tolist() for b in range(len(prompts))]


# ---------------------------------------------------------------------------------------------
# A task, one model
# ---------------------------------------------------------------------------------------------


def check_gen(specs: list[str], layerwise: bool, max_new_tokens: int | None) -> None:
    """Refuse, before any work, what generation cannot do."""
    if specs and layerwise:
        raise UsageError(
            f"generative tasks ({', '.join(specs)}) need the whole model in memory: drop --layerwise "
            "(or evaluate them in a separate run without it)"
        )
    if max_new_tokens is not None and max_new_tokens < 1:
        raise UsageError(f"`max_new_tokens={max_new_tokens}` must be at least 1")


def check_gen_fits(config, path: str, max_length: int | None, max_new_tokens: int) -> None:
    L = max_length or config.max_position_embeddings
    if max_new_tokens >= L:
        raise UsageError(
            f"`max_new_tokens={max_new_tokens}` leaves no room for the prompt in {path}'s {L}-token context; "
            f"choose fewer than {L}"
        )


def evaluate_gen(
    runner, task: GenTask, *, max_new_tokens: int, max_length: int | None, batch_size: int, progress=None
) -> tuple[dict, list[dict]]:
    """(metrics, per-item predictions) of one generative task on the runner's model."""
    if runner.model is None:
        raise UsageError(_not_whole(runner.path, runner.device))
    tok, L = runner.tokenizer, max_length or runner.config.max_position_embeddings
    eos_text = [tok.decode([tok.eos_token_id])] if tok.eos_token_id is not None else []
    stops = [list(dict.fromkeys(task.stop + it.stop + eos_text)) for it in task.items]
    encoded = [tok.encode(it.prompt) for it in task.items]
    empty = next((it.id for it, e in zip(task.items, encoded) if not e), None)
    if empty is not None:
        raise DataError(f"{task.name} item {empty}: its prompt encodes to no token; give it some text")
    keep = L - max_new_tokens
    prompts = [e[-keep:] for e in encoded]
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), task.items[i].prompt))  # longest first
    outs: list[list[int]] = [[] for _ in prompts]
    t0, done = time.perf_counter(), 0
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = generate_until(
            runner.model, tok, [prompts[i] for i in idx], [stops[i] for i in idx], max_new_tokens, runner.path
        )
        for i, ids in zip(idx, batch):
            outs[i] = ids
        done += len(idx)
        if progress:
            progress(done)
    seconds = time.perf_counter() - t0
    eos = tok.eos_token_id
    outs = [o[: o.index(eos) + 1] if eos is not None and eos in o else o for o in outs]  # EOS kept, padding not
    runner.seconds += seconds  # the Models table's tokens/s: prompt and generated tokens run through the model
    runner.tokens += sum(len(p) for p in prompts) + sum(len(o) for o in outs)
    return _score(task, tok, outs, stops, [len(e) > keep for e in encoded], seconds, max_new_tokens)


def _score(task: GenTask, tok, outs, stops, truncated, seconds: float, max_new_tokens: int) -> tuple[dict, list[dict]]:
    correct = {name: 0 for name, _, _ in task.filters}
    preds, n_new = [], sum(len(o) for o in outs)
    for it, ids, st, cut in zip(task.items, outs, stops, truncated):
        text = cut_at_stops(decode_new(tok, ids), st)
        answers = extract(task, text)
        ok = {
            name: exact_match(ans, it.target, **task.match) if name != "none" else ans == it.target.strip()
            for name, ans in answers.items()
        }
        for name in ok:
            correct[name] += ok[name]
        preds.append(
            {"id": it.id, "target": it.target, "generated": text, "extracted": answers, "correct": ok, "truncated": cut}
        )
    n = len(task.items)
    metrics: dict = {}
    for name in correct:
        p = correct[name] / n
        metrics[f"exact_match,{name}"] = p
        metrics[f"exact_match_stderr,{name}"] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else "N/A"
    metrics.update(
        n_items=n,
        max_new_tokens=max_new_tokens,
        truncated=sum(truncated),
        generated_tokens=n_new,
        seconds=round(seconds, 4),
        tokens_per_s=round(n_new / seconds, 1) if seconds else None,
    )
    return metrics, preds


# ---------------------------------------------------------------------------------------------
# Every generative task, one model; two models compared; the tables `emo-slice eval` prints
# ---------------------------------------------------------------------------------------------


def score_gen_tasks(runner, role: str, tasks: dict, opts: dict, samples: list | None, progress=None) -> dict:
    """Metrics of one model on every generative task; per-item predictions appended to samples.
    opts: max_new_tokens (None: each task's default), max_length, batch_size."""
    res = {}
    for name, t in tasks.items():
        label = f"{role} {name}"
        if progress:
            progress(label, 0, len(t.items))
        metrics, preds = evaluate_gen(
            runner,
            t,
            max_new_tokens=opts.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS,
            max_length=opts.get("max_length"),
            batch_size=opts["batch_size"],
            progress=(lambda n, label=label, total=len(t.items): progress(label, n, total)) if progress else None,
        )
        res[name] = metrics
        if samples is not None:
            samples += [{"model": role, "task": name, **p} for p in preds]
    return res


def compare_gen(model: dict, against: dict) -> dict:
    """exact_match,<filter> -> {model, against, diff (model - against), kept (model / against)}."""
    out = {}
    for m, a in model.items():
        if m.startswith("exact_match,") and m in against:
            b = against[m]
            out[m] = {"model": a, "against": b, "diff": a - b, "kept": a / b if b else None}
    return out


def gen_table(data: dict, tname: str, names: list[str]):
    """One generative task's exact match per filter (both models, difference and share kept with --against)."""
    from rich.table import Table

    info, metrics, against = data["tasks"][tname], data["results"][tname], len(names) > 1
    title = (
        f"{tname}: {info['items_scored']} items, {info['shots']}-shot, greedy, up to "
        f"{metrics['max_new_tokens']} new tokens, {metrics['truncated']} cut from the left"
    )
    t = Table(title=title, caption="kept: share of the --against score kept" if against else None)
    t.add_column("metric")
    for col in names + ["difference", "kept"] if against else names:
        t.add_column(col, justify="right")
    for m in (k for k in metrics if k.startswith("exact_match,")):
        if not against:
            t.add_row(m, f"{metrics[m]:.1%}")
            continue
        c = data["comparison"][tname][m]
        kept = f"{c['kept']:.1%}" if c["kept"] is not None else "-"
        t.add_row(m, f"{c['model']:.1%}", f"{c['against']:.1%}", f"{c['diff'] * 100:+.1f} pts", kept)
    return t


# ---------------------------------------------------------------------------------------------
# What simple_evaluate calls
# ---------------------------------------------------------------------------------------------

GENERATION = (
    "greedy with the KV cache (lm-evaluation-harness generate_until): prompts cut from the left to "
    "max_length - max_new_tokens, until a stop sequence or EOS; answers by lm-eval's filters, exact_match"
)


def split_specs(tasks, gen_files, *, layerwise: bool, pool, max_new_tokens: int | None) -> tuple[list, list]:
    """(multiple-choice task specs, generative benchmark specs such as gsm8k), checked: generation needs the
    whole model (no --layerwise) and the KV cache (no document pool)."""
    gen = [t for t in tasks if isinstance(t, str) and is_generative(t)]  # a Task object is multiple choice
    named = gen + [str(f) for f in gen_files]
    check_gen(named, layerwise, max_new_tokens)
    pools = [pool] if isinstance(pool, int) else list(pool or [])
    if named and any(pools):
        raise UsageError(
            f"generative tasks ({', '.join(named)}) run with the KV cache, which a document pool cannot use: "
            "evaluate them in a run without --pool"
        )
    return [t for t in tasks if t not in gen], gen


def load_checked(
    gen_specs,
    gen_files,
    limit,
    taken,
    roles: dict,
    max_length,
    max_new_tokens,
    dtype=None,
    device=None,
    max_memory=None,
) -> dict:
    """The generative tasks, loaded once for both models; each model checked to fit whole on the device
    (`device`, a torch.device; None: not checked) and its context to hold a prompt and max_new_tokens."""
    if not gen_specs and not gen_files:
        return {}
    tasks = load_gen_tasks(list(gen_specs), [str(f) for f in gen_files], limit, taken)
    for path in roles.values():
        ckpt = Checkpoint(path)
        check_gen_fits(ckpt.config, path, max_length, max_new_tokens or DEFAULT_MAX_NEW_TOKENS)
        if device is not None:
            if (
                choose_placement(ckpt, default_dtype(dtype, device), device, max_memory=max_memory)["placement"]
                == STREAMED
            ):
                raise UsageError(_not_whole(path, device))
    return tasks


def _not_whole(path: str, device) -> str:
    return (
        f"generative tasks need the whole model in memory, but {path} does not fit in {device}'s free memory "
        "(it would be streamed layer by layer); use a device with more memory or a smaller --dtype"
    )
