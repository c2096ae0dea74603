"""The paper's multiple-choice benchmarks, built in: `--task mmlu`, `--task arc_easy=FOLDER`, `--task mmlu:mc`.

A spec is NAME, NAME=FOLDER (a local copy, see `loading`), with NAME an entry of `registry.REGISTRY`:
lm-evaluation-harness 0.4.13's tasks in its prompt formats (`formats`), their OLMES multiple-choice
variants NAME:mc, and groups (mmlu, mmlu_stem, ..., mmlu_pro:mc) that load every member task and are
aggregated as lm-eval aggregates groups (`aggregate_groups`: item-weighted mean, pooled stderr).

Few-shot examples come from the task's few-shot split as lm-eval draws them: sampler first_n (MMLU,
MMLU-Pro) takes the first k rows of the split for every item; the default sampler draws k rows per item
with one `random.Random(seed)` in item order (lm-eval's fewshot seed is 1234: `--seed 1234` gives its draw).
lm-eval puts the task's description first, then each example as context + " " + gold choice + "\\n\\n".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from emo_slice.data.benchmarks.formats import CONVERTERS, DELIMITER, Doc, RowError
from emo_slice.data.benchmarks.loading import MissingData, Source, cached_snapshot, open_source
from emo_slice.data.benchmarks.registry import ALIASES, GEN, GENERATIVE, REGISTRY, Benchmark, leaves, resolve
from emo_slice.data.sources import UNLABELLED, MCItem, Task, items_hash
from emo_slice.errors import DataError, UsageError

__all__ = ["REGISTRY", "aggregate_groups", "describe_groups", "is_benchmark", "listing", "load_benchmark"]

_ID_FIELDS = ("id", "question_id", "ind", "idx")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'mmlu=/data/mmlu' -> ('mmlu', '/data/mmlu'); 'arc_easy' -> ('arc_easy', None)."""
    name, eq, folder = spec.partition("=")
    return name.strip(), (folder if eq else None)


def is_benchmark(spec: str) -> bool:
    """A built-in benchmark name (optionally =FOLDER), multiple choice or a group of such."""
    b = resolve(parse_spec(spec)[0])
    return b is not None and b.kind != GEN


def check_variant(spec: str) -> None:
    """Refuse NAME:mc for a benchmark that has no OLMES multiple-choice variant here (not a file name)."""
    name, folder = parse_spec(spec)
    base, sep, variant = name.rpartition(":")
    if sep and resolve(base) is not None and resolve(name) is None and (folder is not None or variant == "mc"):
        have = ", ".join(sorted({n[:-3] for n in REGISTRY if n.endswith(":mc") and not REGISTRY[n].subtask}))
        raise UsageError(f"--task {name}: {base} has no OLMES multiple-choice variant; NAME:mc exists for {have}")


@dataclass
class BenchmarkTask(Task):
    """A built-in benchmark's task: the items, plus the groups it counts in and where it came from."""

    groups: tuple[str, ...] = ()
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {
            **self.info,
            "items_in_source": self.n_total,
            "items_scored": len(self.items),
            "shots": self.info.get("shots", 0),
            "items_hash": items_hash(self.items),
        }


def _rows(src: Source, b: Benchmark, split: str, hub: bool, scored: bool = False) -> list[dict]:
    """The rows of one task's split; a subject of a shared config (MMLU's `all`, MMLU-Pro) filtered from it.
    scored: a saved Dataset without split names may stand for the split (not for the few-shot split)."""
    try:
        if b.subset is not None:
            config, col, value = b.subset
            if config is None or src.has_config(config):
                return [r for r in src.rows(config, split, scored) if r.get(col) == value]
            rows = src.rows(b.config, split, scored)  # the subject's own config, or a folder of its rows
            return [r for r in rows if r.get(col) == value] if rows and col in rows[0] else rows
        return src.rows(b.config, split, scored)
    except MissingData as e:
        where = f"; to fetch it whole: `hf download {b.hub} --repo-type dataset`" if hub else ""
        raise DataError(f"{b.name}: {src.label}: {e}{where}") from None


def _docs(rows: list[dict], b: Benchmark, split: str, label: str) -> list[Doc]:
    convert = CONVERTERS[b.doc]
    docs = []
    for i, row in enumerate(rows):
        try:
            doc = convert(row)
            if doc.gold == -1:
                raise RowError(f"has {UNLABELLED}")
            if not (isinstance(doc.gold, int) and 0 <= doc.gold < len(doc.choices)):
                raise RowError(f"has label {doc.gold!r}, which does not index its {len(doc.choices)} choices")
            docs.append(doc)
        except RowError as e:
            raise DataError(f"{b.name}: {label} split {split!r} row {i} {e}; is it {b.hub}?") from None
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise DataError(
                f"{b.name}: {label} split {split!r} row {i} does not have {b.hub}'s shape ({type(e).__name__}: {e})"
            ) from None
    return docs


def _item(row: dict, i: int, doc: Doc, prefix: str) -> MCItem:
    item_id = next((str(row[k]) for k in _ID_FIELDS if k in row), str(i))
    contexts = [prefix + c for c in doc.contexts] if doc.contexts else None
    return MCItem(item_id, prefix + doc.context, list(doc.choices), doc.gold, contexts, DELIMITER)


def _demo_prefixes(b: Benchmark, n_items: int, pool: list[Doc], shots: int, seed: int, same: bool) -> list[str]:
    """Per item, its few-shot examples (lm-eval's samplers); '' for every item without shots."""
    if shots == 0:
        return [""] * n_items
    if shots + same > len(pool):
        raise UsageError(f"--shots {shots}: {b.name}'s few-shot split {b.fewshot_split!r} has {len(pool)} rows")
    if b.sampler == "first_n":
        if not same:
            return [""] * n_items  # the shared prefix (Task.prompt)
        return ["".join([d.demo() for j, d in enumerate(pool) if j != i][:shots]) for i in range(n_items)]
    rng = random.Random(seed)
    out = []
    for i in range(n_items):
        idx = rng.sample(range(len(pool)), shots + same)
        out.append("".join(pool[j].demo() for j in [j for j in idx if not (same and j == i)][:shots]))
    return out


def _load_one(b: Benchmark, src: Source, spec: str, *, shots: int, seed: int, limit, split) -> BenchmarkTask:
    hub = "=" not in spec  # read from the hub cache (not a local folder)
    scored = split or b.split
    rows = _rows(src, b, scored, hub, scored=True)
    if not rows:
        raise DataError(f"{b.name}: {src.label} has no rows in split {scored!r}")
    n_total = len(rows)
    rows = rows[:limit] if limit is not None else rows
    docs = _docs(rows, b, scored, src.label)
    same = b.fewshot_split == scored
    pool = _docs(_rows(src, b, b.fewshot_split, hub), b, b.fewshot_split, src.label) if shots else []
    shared = "".join(d.demo() for d in pool[:shots]) if b.sampler == "first_n" and not same else ""
    prefixes = _demo_prefixes(b, len(docs), pool, shots, seed, same)
    items = [_item(r, i, d, p) for i, (r, d, p) in enumerate(zip(rows, docs, prefixes))]
    info = {
        "spec": spec,
        "benchmark": b.name,
        "format": b.format,
        "source": str(src.root),
        "dataset": b.hub + (f":{b.config}" if b.config else ""),
        "split": scored,
        "fewshot_split": b.fewshot_split,
        "sampler": b.sampler,
        "shots": shots,
        "seed": seed if shots and b.sampler != "first_n" else None,
    }
    return BenchmarkTask(b.name, spec, b.format, items, [], b.description + shared, n_total, groups=b.groups, info=info)


def load_benchmark(
    spec: str, *, shots: int = 0, seed: int = 0, limit: int | None = None, split: str | None = None
) -> list[BenchmarkTask]:
    """The tasks of a benchmark spec (one, or a group's members), read from the cache or the given folder."""
    name, folder = parse_spec(spec)
    b = resolve(name)
    if b is None or b.kind == GEN:
        raise UsageError(f"--task {name}: not a built-in multiple-choice benchmark; `emo-slice tasks` lists them")
    if shots < 0:
        raise UsageError("--shots must be >= 0")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1")
    src = open_source(name, b.hub, folder)
    return [_load_one(leaf, src, spec, shots=shots, seed=seed, limit=limit, split=split) for leaf in leaves(b)]


# ------------------------------------------------------------------------------------------------------------
# Groups: lm-eval's aggregation (lm_eval/api/group.py): weighted by size, stderr pooled
# ------------------------------------------------------------------------------------------------------------


def pooled_stderr(stderrs: list[float], sizes: list[int]) -> float:
    """lm-eval's pooled_sample_stderr."""
    var = sum((n - 1) * s**2 * n for n, s in zip(sizes, stderrs)) / (sum(sizes) - len(sizes))
    return (var / sum(sizes)) ** 0.5


def aggregate_group(members: dict[str, dict]) -> dict:
    """One group's metrics from its members' results: each accuracy metric as the item-weighted mean (lm-eval's
    weight_by_size), `X_stderr,none` pooled as lm-eval pools it; n_items summed."""
    sizes = [m["n_items"] for m in members.values()]
    out: dict = {"n_items": sum(sizes), "tasks": len(members)}
    out["truncated"] = sum(m.get("truncated", 0) for m in members.values())
    first = next(iter(members.values()))
    for key, v in first.items():
        if not key.startswith("acc") or "_stderr" in key or not isinstance(v, (int, float)):
            continue
        values = [m.get(key) for m in members.values()]
        if any(not isinstance(x, (int, float)) for x in values):
            continue
        out[key] = sum(x * n for x, n in zip(values, sizes)) / sum(sizes)
        skey = key.replace(",", "_stderr,", 1) if "," in key else None
        stderrs = [m.get(skey) for m in members.values()] if skey else []
        if skey and all(isinstance(s, (int, float)) for s in stderrs) and sum(sizes) > len(sizes):
            out[skey] = pooled_stderr(stderrs, sizes)
    return out


def aggregate_groups(results: dict[str, dict], tasks: dict) -> dict[str, dict]:
    """Each group the scored tasks count in (their `groups`) and whose every member was scored, aggregated
    over its members (`--task mmlu_stem` gives mmlu_stem, not a partial mmlu). A suffix of the result name
    after the task's (a pool's "@pool8") is carried to the group's name."""
    groups: dict[str, dict[str, dict]] = {}
    for name, t in tasks.items():
        for rname, metrics in results.items():
            if rname == name or (rname.startswith(name) and rname[len(name)] == "@"):
                for g in getattr(t, "groups", ()):
                    groups.setdefault(g + rname[len(name) :], {})[rname] = metrics
    out = {}
    for g, members in groups.items():
        base, _, sfx = g.partition("@")
        want = {m + ("@" + sfx if sfx else "") for m in REGISTRY[base].members}
        if want <= set(members):
            out[g] = aggregate_group(members)
    return out


AGGREGATION = "lm-eval's group aggregation: item-weighted mean of the members (weight_by_size), stderr pooled"


def describe_groups(group_results: dict[str, dict], shots: int) -> dict[str, dict]:
    """The results file's `tasks` entry of each aggregated group."""
    out = {}
    for g, r in group_results.items():
        base, _, sfx = g.partition("@")
        members = [m + ("@" + sfx if sfx else "") for m in REGISTRY[base].members]
        out[g] = {"group": members, "items_scored": r["n_items"], "shots": shots, "aggregation": AGGREGATION}
    return out


# ------------------------------------------------------------------------------------------------------------
# The listing (`emo-slice tasks`)
# ------------------------------------------------------------------------------------------------------------


def _is_available(b: Benchmark) -> bool:
    return b.kind != GEN or b.name in GENERATIVE


def listing(all_tasks: bool = False) -> list[dict]:
    """One dict per registry entry (subtasks only with all_tasks): what `emo-slice tasks` shows."""
    cached: dict[str, bool] = {}
    out = []
    for b in REGISTRY.values():
        if b.subtask and not all_tasks:
            continue
        if b.hub not in cached:
            cached[b.hub] = cached_snapshot(b.hub) is not None
        first = leaves(b)[0]
        out.append(
            {
                "name": b.name,
                "aliases": [a for a, n in ALIASES.items() if n == b.name],
                "kind": b.kind if b.kind != "group" else f"group of {len(b.members)}",
                "format": b.format,
                "choices": b.choices,
                "split": first.split,
                "fewshot_split": first.fewshot_split,
                "sampler": first.sampler,
                "dataset": b.hub + (f":{b.config}" if b.config else ""),
                "cached": cached[b.hub],
                "available": _is_available(b),
                "members": list(b.members),
                "note": b.note,
                "download": None if cached[b.hub] else f"hf download {b.hub} --repo-type dataset",
            }
        )
    return out
