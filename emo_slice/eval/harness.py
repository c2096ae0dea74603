"""Scoring a model: multiple-choice ranking classification and language-modelling perplexity.

Multiple choice: each choice is scored by the log-likelihood of its tokens given the context (ranking
classification, as lm-evaluation-harness and OLMES do), exactly as lm-evaluation-harness 0.4 scores it by
default (encoding "lm-eval", `emo_slice.eval.encoding`): the context's trailing whitespace moves to the
continuation (target_delimiter + choice), context + continuation is encoded as ONE string and the tokens
after len(encode(context)) are the choice's; each request is cut from the left on its own to
max_length + 1 tokens. Encoding "separate" (a named option) tokenises context and continuation apart.
Every choice of an item then follows the very same context tokens, so one row holds the context ONCE
followed by all its choices: a tree attention mask lets each choice attend to the context and to itself
only, and each choice's positions restart right after the context. Routing is per token, so every scored
log-probability is the one a separate forward pass of context + choice gives (tests check it), for about
ctx + sum(choices) tokens instead of n_choices * (ctx + choice). An item with a cut request or per-choice
contexts (Winogrande), or every item with per_choice_rows=True (a document pool needs it), is scored one
row per choice.

Metrics per task (higher is better unless said; `emo_slice.eval.metrics`): lm-evaluation-harness's
acc,none and acc_norm,none (log-likelihood / len(choice) in characters, without delimiter) with
acc_stderr,none and acc_norm_stderr,none, its numbers (no acc_norm for a task with per-choice contexts,
as lm-eval's winogrande); OLMES's acc_raw (summed log-likelihood), acc_per_token, acc_per_char,
acc_per_byte (log-likelihood divided by the scored continuation's tokens /
characters / UTF-8 bytes; the scored continuation is the moved whitespace + delimiter + choice),
acc_uncond (log-likelihood minus that of the choice after a bare "Answer:" prompt; on request),
bits_per_byte_gold (lower is better: sum over items of -log2 p(gold) / sum of the gold's bytes).

Language modelling: perplexity per token and bits per byte, each document prefixed with EOS; rows are
either one document per row ("rows") or documents packed end to end ("packed"); documents (or the
packed stream) longer than the context are cut into disjoint windows.

The whole evaluation (`simple_evaluate`, as in lm-evaluation-harness) loads the tasks once, scores the
model and then, with `against`, a second model on the very same items, and returns the results dict
that `save_results` writes and `emo-slice eval` prints.

Shape letters: the legend in `emo_slice/__init__.py`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from emo_slice._aliases import module_getattr
from emo_slice.artifacts import provenance
from emo_slice.data.benchmarks import aggregate_groups, describe_groups
from emo_slice.data.sources import check_tokenizer_fits, read_texts
from emo_slice.data.tasks import Task, load_tasks, parse_map
from emo_slice.errors import UsageError
from emo_slice.eval import generative as gen
from emo_slice.eval.encoding import check_encoding
from emo_slice.eval.metrics import compare, task_metrics
from emo_slice.eval.results import RESULTS_FORMAT, save_results, without_samples  # noqa: F401
from emo_slice.eval.runner import Runner, check_pool
from emo_slice.eval.scoring import MCResult, check_finite, evaluate_lm, evaluate_mc, score_rows  # noqa: F401
from emo_slice.eval.settings import EvalSettings
from emo_slice.io.checkpoint import Checkpoint, parse_dtype
from emo_slice.io.tokenizer import load_tokenizer
from emo_slice.model.devices import resolve_device

# ---------------------------------------------------------------------------------------------
# The whole evaluation: one model, or two on the very same items (what `emo-slice eval` runs)
# ---------------------------------------------------------------------------------------------

Progress = Callable[..., None]  # (label, done, total, tokens=None, unit=None): emo_slice/progress.py
SCORING = {
    "lm-eval": "ranking classification as lm-evaluation-harness 0.4: context + continuation encoded as one string, "
    "per-request left truncation; one row per item (context once, then every choice) where no request is cut",
    "separate": "ranking classification; context and continuation tokenised separately; per-request left "
    "truncation; one row per item (context once, then every choice) where no request is cut",
}


def _load_tasks(specs, fields: dict, fmt, split, shots, seed, limit) -> dict:
    """Tasks by unique name, loaded once: both models see exactly the same items. A built-in benchmark group
    (mmlu) gives its member tasks; a Task object is taken as it is."""
    tasks = {}
    for spec in specs:
        loaded = [spec] if isinstance(spec, Task) else load_tasks(spec, fields, fmt, split, shots, seed, limit)
        for t in loaded:
            name, k = t.name, 2
            while name in tasks:
                name, k = f"{t.name}_{k}", k + 1
            tasks[name] = t
    return tasks


def _load_texts(specs, field, split, limit) -> dict:
    """lm:NAME -> (spec, documents)."""
    if not specs:
        return {}

    texts = {}
    for src in specs:
        docs = read_texts(src, field, split, "--lm")
        texts["lm:" + (Path(src).stem if Path(src).exists() else src)] = (src, docs if limit is None else docs[:limit])
    return texts


class _Advance:
    """Progress of one task: advance(items, tokens) as batches finish; layers(done, total, tokens) per layer
    of a pass (Runner.run calls both)."""

    def __init__(self, progress: Progress, label: str, total: int | None):
        self.progress, self.label, self.total, self.done, self.tokens = progress, label, total, 0, 0
        progress(label, 0, total)

    def __call__(self, n: int, tokens: int = 0) -> None:
        self.done, self.tokens = self.done + n, self.tokens + tokens
        self.progress(self.label, self.done, self.total, self.tokens)

    def layers(self, done: int, total: int, tokens: float) -> None:
        self.progress(f"{self.label} layers", done, total, tokens, "layers")


def _advance(progress: Progress | None, label: str, total: int | None):
    return None if progress is None else _Advance(progress, label, total)


def pool_suffix(pool: int | None) -> str:
    """What a result's name carries when it was routed inside a document pool: "@pool8" (nothing without)."""
    return f"@pool{pool}" if pool else ""


def _pools(pool) -> list[int | None]:
    """--pool values as a list: None / [] -> [None] (no pool); 0 means no pool; order kept, repeats dropped."""
    values = [pool] if pool is None or isinstance(pool, int) else list(pool) or [None]
    out: list[int | None] = []
    for p in values:
        p = None if p == 0 else p
        if p not in out:
            out.append(p)
    return out


def _score_model(
    runner: Runner, role: str, tasks: dict, texts: dict, opts: dict, samples: list | None, progress: Progress | None
) -> dict:
    """Metrics of one model on every task and text (names suffixed by the runner's pool); per-item predictions
    appended to samples."""
    sfx = pool_suffix(runner.pool)
    res = {}
    for name, t in tasks.items():
        r = evaluate_mc(
            runner,
            t.items,
            prefix=t.prompt,
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
            uncond=opts["uncond"],
            encoding=opts["encoding"],
            per_choice_rows=opts["per_choice_rows"],
            task=name + sfx,
            progress=_advance(progress, f"{role} {name}{sfx}", len(t.items)),
        )
        metrics, preds = task_metrics(r.metrics, r.predictions, t.items)
        res[name + sfx] = metrics
        if samples is not None:
            samples += [{"model": role, "task": name + sfx, **p} for p in preds]
    for name, (_, docs) in texts.items():
        res[name + sfx] = evaluate_lm(
            runner,
            docs,
            mode=opts["lm_mode"],
            max_length=opts["max_length"],
            batch_size=opts["batch_size"],
            task=name + sfx,
            progress=_advance(progress, f"{role} {name}{sfx}", None),
        )
    return res


def _check_settings(tasks, lm, batch_size, max_length, limit, lm_mode, dtype) -> None:
    if not tasks and not lm:
        raise UsageError("nothing to evaluate: give at least one of `tasks`, `gen_tasks` or `lm`")
    if batch_size < 1:
        raise UsageError(f"`batch_size={batch_size}` must be at least 1")
    if max_length is not None and max_length < 2:
        raise UsageError(f"`max_length={max_length}` must be at least 2")
    if limit is not None and limit < 1:
        raise UsageError(f"`limit={limit}` must be at least 1")
    if lm_mode not in ("rows", "packed"):
        raise UsageError(f"`lm_mode={lm_mode!r}` is unknown; choose rows or packed")
    parse_dtype(dtype)


def _check_model(ckpt, path: str, max_length: int | None, pools=()) -> None:
    """The tokenizer's ids fit the model's vocabulary, --max-length its context (no silent clamp), and every
    --pool its routing."""
    check_tokenizer_fits(load_tokenizer(ckpt.path), ckpt.config.vocab_size, path)
    for p in pools:
        check_pool(p, ckpt.config)
    context = ckpt.config.max_position_embeddings
    if max_length is not None and max_length > context:
        raise UsageError(
            f"`max_length={max_length}` is more than {path}'s context (max_position_embeddings {context}); "
            f"choose at most {context}, or leave `max_length` out to use it"
        )


def _describe(task_sets: dict, texts: dict, lm_mode: str, pools: list) -> dict:
    """Each result's task description, under the result's name (NAME@poolP with a pool)."""
    base = {name: t.describe() for name, t in task_sets.items()} | {
        name: {"spec": src, "documents": len(docs), "mode": lm_mode} for name, (src, docs) in texts.items()
    }
    return {name + pool_suffix(p): d | ({"pool": p} if p else {}) for p in pools for name, d in base.items()}


def simple_evaluate(
    model: str,
    *,
    against: str | None = None,
    tasks: Sequence[str | Task] = (),
    lm: Sequence[str] = (),
    gen_tasks: Sequence[str] = (),
    settings: EvalSettings | None = None,
    log_samples: bool = False,
    progress: Progress | None = None,
    **options,
) -> dict:
    """Score `model` (and `against`, on exactly the same items) on multiple-choice `tasks` and `lm` texts.

    tasks: Task objects (`emo_slice.data.tasks.Task`, items already loaded: scored as they are, as
    lm-evaluation-harness takes task objects) or task specs (a built-in benchmark name, a task file or
    dataset, read with the settings' field map, format, split, shots, seed and limit). lm: text specs.
    gen_tasks: generative JSONL files; with `gsm8k` among `tasks`, scored by greedy generation
    (`emo_slice.eval.generative`). settings: `EvalSettings` (its field docs say what each does); `options`
    are its fields as keywords (`shots=5, batch_size=8`), applied over `settings`.

    Returns the results dict (lm-evaluation-harness shape): results, models, tasks, settings, provenance,
    and with `against`: against_results, comparison; with log_samples: samples (per-item predictions).
    Both checkpoints are opened, and every task read, before the first model is scored. A list of pools
    scores every task once per pool (0: no pool), results named NAME@poolP. Each model runs whole on the
    device when it fits, else streamed layer by layer (as with layerwise); models[role]["placement"] says which.
    """
    s = asdict(replace(settings or EvalSettings(), **options))
    roles = {"model": model, **({"against": against} if against else {})}
    run = _prepare(roles, list(tasks), list(lm), s["field_map"], list(gen_tasks), s["text_field"], s)
    results, models, samples = _score_models(roles, run, s, log_samples, progress)
    return _results_dict(results, models, samples, run, s)


@dataclass
class _Run:
    """What simple_evaluate has read and checked before scoring: the device, pools, field map and every task."""

    dev: object  # torch.device
    pools: list
    fields: dict
    task_sets: dict
    texts: dict
    gen_sets: dict


def _prepare(roles: dict, tasks, lm, field_map, gen_tasks, text_field, s: dict) -> _Run:
    """Every setting and both checkpoints checked, then every task read, before any model is scored."""
    pool, max_length, limit, max_new_tokens = s["pool"], s["max_length"], s["limit"], s["max_new_tokens"]
    tasks, gen_specs = gen.split_specs(
        tasks, gen_tasks, layerwise=s["layerwise"], pool=pool, max_new_tokens=max_new_tokens
    )
    _check_settings([*tasks, *gen_specs, *gen_tasks], lm, s["batch_size"], max_length, limit, s["lm_mode"], s["dtype"])
    check_encoding(s["encoding"])
    dev = resolve_device(s["device"])  # a bad --device is refused before any task is read
    pools = _pools(pool)
    for path in roles.values():  # a bad --against fails now, not after the first model is scored
        _check_model(Checkpoint(path), path, max_length, pools)
    fields = parse_map(field_map) if not isinstance(field_map, dict) else field_map
    task_sets = _load_tasks(tasks, fields, s["fmt"], s["split"], s["shots"], s["seed"], limit)
    texts = _load_texts(lm, text_field, s["split"], limit)
    gen_sets = gen.load_checked(
        gen_specs, gen_tasks, limit, set(task_sets), roles, max_length, max_new_tokens, s["dtype"], dev, s["max_memory"]
    )
    return _Run(dev, pools, fields, task_sets, texts, gen_sets)


def _score_models(roles: dict, run: _Run, s: dict, log_samples: bool, progress: Progress | None):
    """(results by role, models by role, samples or None): each model loaded once and scored with every pool,
    its groups aggregated (mmlu, mmlu_stem, ...: lm-eval's way), then its generative tasks."""
    opts = {k: s[k] for k in ("max_length", "batch_size", "uncond", "lm_mode", "encoding", "per_choice_rows")}
    gopts = {k: s[k] for k in ("max_new_tokens", "max_length", "batch_size")}
    results, models, samples = {}, {}, ([] if log_samples else None)
    for role, path in roles.items():
        runner = Runner(path, s["dtype"], s["layerwise"], device=run.dev, max_memory=s["max_memory"])
        results[role] = {}
        for p in run.pools:  # the model is loaded once and scored with each pool in turn
            runner.pool = check_pool(p, runner.config)
            results[role].update(_score_model(runner, role, run.task_sets, run.texts, opts, samples, progress))
        results[role].update(aggregate_groups(results[role], run.task_sets))
        results[role].update(gen.score_gen_tasks(runner, role, run.gen_sets, gopts, samples, progress))
        models[role] = runner.describe() | {"pool": _pool_setting(s["pool"], run.pools)}
        del runner
    return results, models, samples


def _pool_setting(pool, pools: list) -> list[int] | None:
    return [p or 0 for p in pools] if pool is not None else None


def _settings(s: dict, run: _Run) -> dict:
    """The results file's `settings`: every option the scores depend on."""
    keys = ("shots", "seed", "limit", "batch_size", "max_length", "uncond", "layerwise", "dtype")
    return {k: s[k] for k in keys} | {
        "device": str(run.dev),
        "pool": _pool_setting(s["pool"], run.pools),
        "map": run.fields,
        "format": s["fmt"],
        "split": s["split"],
        "lm_mode": s["lm_mode"],
        "encoding": s["encoding"],
        "per_choice_rows": s["per_choice_rows"] or any(run.pools),  # a pool always scores one row per choice
        "scoring": SCORING[s["encoding"]],
        "gen_tasks": list(run.gen_sets),
        "max_new_tokens": s["max_new_tokens"],
        "generation": gen.GENERATION if run.gen_sets else None,
    }


def _results_dict(results: dict, models: dict, samples: list | None, run: _Run, s: dict) -> dict:
    """The results dict simple_evaluate returns (lm-evaluation-harness shape)."""
    groups = describe_groups(aggregate_groups(results["model"], run.task_sets), s["shots"])
    data = {
        "format": RESULTS_FORMAT,
        "results": results["model"],
        "models": models,
        "tasks": _describe(run.task_sets, run.texts, s["lm_mode"], run.pools)
        | groups
        | {n: t.describe() for n, t in run.gen_sets.items()},
        "settings": _settings(s, run),
        "provenance": provenance(command="emo-slice eval"),
    }
    if "against" in results:
        data["against_results"] = results["against"]
        data["comparison"] = {
            n: (gen.compare_gen if n in run.gen_sets else compare)(results["model"][n], results["against"][n])
            for n in results["model"]
        }
    if samples is not None:
        data["samples"] = samples
    return data


__getattr__ = module_getattr(__name__)  # evaluate_and_save: moved to workflows/eval.py (emo_slice/_aliases.py)
