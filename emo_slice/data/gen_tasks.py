"""Generative tasks for `emo-slice eval`: GSM8K (lm-evaluation-harness's `gsm8k_cot`) and `--gen-task FILE`.

A generative item is a prompt, the gold answer and the stop sequences that end a continuation. How an
answer is read out of the continuation and compared with the gold is the task's `filters` and
`exact_match` options (`emo_slice.eval.generative` applies them).

- `gsm8k` (or `gsm8k=PATH` for a `Dataset.save_to_disk` folder or a data file): lm-eval 0.4.13's
  `gsm8k_cot` (lm_eval/tasks/gsm8k/gsm8k-cot.yaml): the test split of openai/gsm8k (config main), its
  fixed 8 chain-of-thought exemplars as "Q: {question}\\nA: {target}" joined by blank lines, then
  "Q: {question}\\nA:"; greedy until "Q:", "</s>", "<|im_end|>" (and the tokenizer's EOS), at most 256
  new tokens; gold = the text after "####". Two answer filters: "strict-match" (the first
  "The answer is N.") and "flexible-extract" (the last number); exact_match ignoring case, ",", "$",
  everything up to "#### " and a final ".".
- `--gen-task FILE`: JSONL records {"prompt", "target", "stop" (optional list), "id" (optional)}; the
  continuation, cut at the first stop sequence and stripped, must equal the stripped target.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emo_slice.data.benchmarks.loading import MissingData, open_source
from emo_slice.data.benchmarks.registry import GENERATIVE
from emo_slice.data.sources import check_text, file_hash, read_records
from emo_slice.errors import DataError, UsageError

GSM8K_EXEMPLARS = [  # gsm8k-cot.yaml fewshot_config.samples, in order (sampler first_n)
    (
        "There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, "
        "there will be 21 trees. How many trees did the grove workers plant today?",
        "There are 15 trees originally. Then there were 21 trees after some more were planted. "
        "So there must have been 21 - 15 = 6. The answer is 6.",
    ),
    (
        "If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
        "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. The answer is 5.",
    ),
    (
        "Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
        "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. "
        "After eating 35, they had 74 - 35 = 39. The answer is 39.",
    ),
    (
        "Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. "
        "How many lollipops did Jason give to Denny?",
        "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. "
        "So he gave Denny 20 - 12 = 8. The answer is 8.",
    ),
    (
        "Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
        "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. "
        "5 + 4 = 9. The answer is 9.",
    ),
    (
        "There were nine computers in the server room. Five more computers were installed each day, from monday to "
        "thursday. How many computers are now in the server room?",
        "There were originally 9 computers. For each of 4 days, 5 more computers were added. "
        "So 5 * 4 = 20 computers were added. 9 + 20 is 29. The answer is 29.",
    ),
    (
        "Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. "
        "How many golf balls did he have at the end of wednesday?",
        "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. "
        "After losing 2 more, he had 35 - 2 = 33 golf balls. The answer is 33.",
    ),
    (
        "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
        "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. "
        "So she has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.",
    ),
]
GSM8K_STOP = ["Q:", "</s>", "<|im_end|>"]
GSM8K_FILTERS = [  # (name, regex, group_select), each followed by take_first
    ("strict-match", r"The answer is (\-?[0-9\.\,]+).", 0),
    ("flexible-extract", r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1),
]
GSM8K_MATCH = {
    "ignore_case": True,
    "ignore_punctuation": False,
    "regexes_to_ignore": [",", r"\$", "(?s).*#### ", r"\.$"],
}
GSM8K_HUB = ("openai/gsm8k", "main", "test")
DEFAULT_MAX_NEW_TOKENS = 256  # lm-eval's max_gen_toks default


@dataclass
class GenItem:
    id: str
    prompt: str
    target: str
    stop: list[str] = field(default_factory=list)  # this item's stop sequences (besides the task's)


@dataclass
class GenTask:
    name: str
    spec: str
    kind: str  # "gsm8k" or "file"
    items: list[GenItem]
    n_total: int
    stop: list[str]  # stop sequences of every item
    filters: list[tuple[str, str, int]]  # (name, regex, group_select); [("none", "", 0)]: the stripped text
    match: dict  # exact_match options
    shots: int = 0

    def describe(self) -> dict:
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps(asdict(it), sort_keys=True).encode())
        src = Path(self.spec)
        return {
            "spec": self.spec,
            "format": "gsm8k_cot (lm-evaluation-harness)" if self.kind == "gsm8k" else "generative JSONL",
            "items_in_source": self.n_total,
            "items_scored": len(self.items),
            "shots": self.shots,
            "stop": self.stop,
            "filters": [f[0] for f in self.filters],
            "items_hash": h.hexdigest()[:16],
            "file_hash": _file_hash(src) if self.kind == "file" else None,
        }


def _file_hash(path: Path) -> str:
    return file_hash(path)


def is_generative(spec: str) -> bool:
    """`--task gsm8k` or `--task gsm8k=PATH`: a built-in generative benchmark rather than a multiple-choice task."""
    return spec.partition("=")[0].strip() in GENERATIVE


def gsm8k_prompt(question: str) -> str:
    """lm-eval's gsm8k_cot context: the 8 exemplars ("Q: ...\\nA: ..." + blank line), then the question."""
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in GSM8K_EXEMPLARS)
    return f"{shots}Q: {question}\nA:"


def gsm8k_target(answer: str) -> str:
    """The gold of a GSM8K answer: what follows the last "####", stripped."""
    return answer.split("####")[-1].strip()


def _gsm8k_records(spec: str) -> list[dict]:
    """The test split's rows: openai/gsm8k (config main) from the Hugging Face cache, or a local copy
    (`gsm8k=FOLDER`: a snapshot, a save_to_disk DatasetDict, or parquet/jsonl files named by split), read
    by the built-in benchmarks' loader (`emo_slice.data.benchmarks.loading`)."""
    _, eq, folder = spec.partition("=")
    repo, config, split = GSM8K_HUB
    src = open_source("gsm8k", repo, folder if eq else None)
    try:
        return src.rows(config, split)
    except MissingData as e:
        raise DataError(f"gsm8k: {src.label}: {e}{src.hint}") from None


def load_gsm8k(spec: str, limit: int | None = None) -> GenTask:
    """gsm8k_cot's items: always the test split and the fixed 8 exemplars (--split and --shots do not apply)."""
    records = _gsm8k_records(spec)
    items = []
    for i, rec in enumerate(records):
        q, a = rec.get("question"), rec.get("answer")
        if not isinstance(q, str) or not isinstance(a, str):
            have = ", ".join(sorted(rec))
            raise DataError(f"--task {spec}: record {i} needs text fields 'question' and 'answer' (it has: {have})")
        items.append(GenItem(str(i), gsm8k_prompt(q), gsm8k_target(a)))
    if not items:
        raise DataError(f"--task {spec}: the test split holds no items")
    chosen = items if limit is None else items[:limit]
    return GenTask("gsm8k", spec, "gsm8k", chosen, len(items), list(GSM8K_STOP), GSM8K_FILTERS, GSM8K_MATCH, 8)


def _check_record(rec: dict, where: str) -> GenItem:
    prompt, target, stop = rec.get("prompt"), rec.get("target"), rec.get("stop", [])
    if not isinstance(prompt, str) or not prompt:
        raise DataError(f"{where}: 'prompt' must be non-empty text; fix or drop that record")
    if not isinstance(target, str):
        raise DataError(f"{where}: 'target' must be text (write numbers as \"42\"), not {json.dumps(target)[:40]}")
    if stop is None:
        stop = []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise DataError(f"{where}: 'stop' must be a list of non-empty strings, e.g. [\"\\n\"]")

    for text in (prompt, target, *stop):
        check_text(text, where)
    return GenItem("", prompt, target, stop)


def load_gen_file(path: str, limit: int | None = None) -> GenTask:
    """A --gen-task JSONL file: {"prompt", "target", "stop" (optional), "id" (optional)} per line."""
    p = Path(path).expanduser()
    if not p.is_file() or p.suffix not in (".jsonl", ".json", ".ndjson"):
        what = "no such file" if not p.exists() else "not a JSONL file"
        raise DataError(f"--gen-task {path}: {what}; give a JSONL file of {{prompt, target, stop, id}} records")
    items, seen = [], set()
    for i, rec in enumerate(read_records(p, None, "--gen-task")):
        item = _check_record(rec, f"--gen-task {p}:{i + 1}")
        item.id = str(rec.get("id", i))
        if item.id in seen:
            raise DataError(f"--gen-task {p}:{i + 1}: id {item.id!r} is used twice; give every record its own id")
        seen.add(item.id)
        items.append(item)
    chosen = items if limit is None else items[:limit]
    return GenTask(p.stem, str(path), "file", chosen, len(items), [], [("none", "", 0)], {})


def load_gen_tasks(builtins: list[str], files: list[str], limit: int | None = None, taken=()) -> dict[str, GenTask]:
    """Generative tasks by unique name (names in `taken`, e.g. the multiple-choice tasks', are avoided)."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1")
    tasks: dict[str, GenTask] = {}
    loaded = [load_gsm8k(s, limit) for s in builtins] + [load_gen_file(f, limit) for f in files]
    for t in loaded:
        name, k = t.name, 2
        while name in tasks or name in taken:
            name, k = f"{t.name}_{k}", k + 1
        t.name = name
        tasks[name] = t
    return tasks
