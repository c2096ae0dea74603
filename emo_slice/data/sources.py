"""Input sources shared by profile, eval and pretrain.

A source is a plain text file, a JSONL file, or a Hugging Face dataset (a `save_to_disk` folder, a
data file `datasets` can read, or a cached Hub dataset name). `read_records` gives dicts,
`read_texts` gives documents, `load_mc_task` gives multiple-choice items, `fewshot_prompt` builds a
k-shot prompt with the gold answers appended (the EMO paper's calibration input).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import string
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emo_slice.errors import DataError, UsageError
from emo_slice.io.safefiles import check_tree, folder_file
from emo_slice.safejson import open_regular, read_json, read_jsonl, read_limited


def _get(record: dict, path: str, src: str, flag: str):
    """record['a']['b'] for path 'a.b' (dotted paths reach into nested fields like choices.text)."""
    cur: Any = record
    for part in path.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        else:
            have = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{src}: field {path!r} is not there (fields: {have}); choose one with {flag}")
    return cur


MAX_TEXT_BYTES = 2**31  # a .txt document read whole (corpora larger than this are JSONL, streamed)


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file, newlines normalised to \\n (as open() in text mode); invalid UTF-8 is a
    DataError naming the line."""
    data = read_limited(Path(path), MAX_TEXT_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line} is not valid UTF-8 (byte 0x{data[e.start]:02x} at column {col}); re-save the file as UTF-8"
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def check_text(value: str, where: str) -> str:
    """A string that UTF-8 can encode (JSON may carry lone surrogates such as \\ud800, which it cannot)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{where} holds {value[e.start]!r} (a lone surrogate), which is not text; fix that record"
        ) from None
    return value


def token_id_bound(tok) -> int:
    """One more than the largest token id `tok` can produce (byte tokenizers: 256)."""
    backend = getattr(tok, "backend", None)
    if backend is None:
        return tok.vocab_size
    vocab = backend.get_vocab(with_added_tokens=True)
    return max(vocab.values(), default=-1) + 1


def check_tokenizer_fits(tok, vocab_size: int, model: str) -> None:
    """Refuse a tokenizer that can produce ids the model's embedding has no row for."""
    bound = token_id_bound(tok)
    if bound > vocab_size:
        raise DataError(
            f"{model}: its tokenizer ({tok.describe()}) gives token ids up to {bound - 1} but config.json's "
            f"vocab_size is {vocab_size}, so those ids have no embedding; the tokenizer belongs to another "
            "model: use the one this model was trained with"
        )


def _is_dataset_dir(p: Path) -> bool:
    return p.is_dir() and (
        (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()
    )


def read_records(src: str | os.PathLike, split: str | None = None, flag: str = "--examples") -> list[dict]:
    """All records of a JSONL file or a Hugging Face dataset (local folder, data file, or cached name)."""
    p = Path(src).expanduser()
    if p.is_file() and p.suffix in (".jsonl", ".json", ".ndjson"):
        records = [rec for _, rec in read_jsonl(p)]
        if not records:
            raise DataError(f"{p} holds no records; give a JSONL file with one JSON object per line")
        return records
    return _read_dataset(str(src), split, flag)


def _plain_name(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def _check_saved_folder(folder: Path, flag: str) -> None:
    """A `Dataset.save_to_disk` folder as the datasets library will read it: state.json (bounded JSON) listing
    data files that are plain names of regular files in the folder; dataset_info.json bounded JSON."""
    fix = "save the dataset again (Dataset.save_to_disk)"
    state = read_json(_saved_file(folder, "state.json", flag), hint=fix, expect=dict, max_bytes=1 << 26)
    files = state.get("_data_files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and _plain_name(f.get("filename")) for f in files):
        raise DataError(f"{flag}: {folder / 'state.json'} does not list the folder's data files by name; {fix}")
    for f in files:
        _saved_file(folder, f["filename"], flag)
    if os.path.lexists(folder / "dataset_info.json"):
        read_json(_saved_file(folder, "dataset_info.json", flag), hint=fix, expect=dict, max_bytes=1 << 26)


def _saved_file(folder: Path, name: str, flag: str) -> Path:
    hint = "save the dataset again (Dataset.save_to_disk)"
    return folder_file(folder, name, f"{flag} dataset file", kind="dataset folder", error=DataError, hint=hint)


def load_saved(folder: str | os.PathLike, flag: str):
    """`datasets.load_from_disk` of a save_to_disk folder (a Dataset or a DatasetDict), checked first: everything
    under it a regular file or folder inside it (io.safefiles.check_tree), its JSON bounded, the data files its
    state.json lists inside it; whatever the datasets library still refuses is one DataError line."""
    import datasets

    folder = Path(folder)
    fix = "save the dataset again (Dataset.save_to_disk)"
    check_tree(folder, kind="dataset folder", error=DataError, hint=fix)
    if os.path.lexists(folder / "dataset_dict.json"):
        d = read_json(_saved_file(folder, "dataset_dict.json", flag), hint=fix, expect=dict, max_bytes=1 << 20)
        splits = d.get("splits")
        if not isinstance(splits, list) or not all(_plain_name(s) and (folder / s).is_dir() for s in splits):
            raise DataError(f"{flag}: {folder / 'dataset_dict.json'} does not list the split folders it holds; {fix}")
        for s in splits:
            _check_saved_folder(folder / s, flag)
    else:
        _check_saved_folder(folder, flag)
    try:
        return datasets.load_from_disk(str(folder))
    except Exception as e:  # pyarrow and datasets raise many kinds for a damaged folder
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{flag}: cannot read {folder} as a saved dataset ({why}); {fix}") from None


def read_parquet(path: Path, flag: str) -> list[dict]:
    """The rows of a parquet file (pyarrow), or one DataError line when it does not open."""
    import pyarrow.parquet as pq

    try:
        with open_regular(path) as f:
            return pq.read_table(f).to_pylist()
    except DataError:
        raise
    except Exception as e:  # ArrowInvalid, OSError, ...: a damaged or foreign file
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise DataError(f"{flag}: {path} is not a readable parquet file ({why}); download it again") from None


def _read_dataset(src: str, split: str | None, flag: str) -> list[dict]:
    try:
        import datasets
    except ImportError:  # pragma: no cover
        raise UsageError("reading Hugging Face datasets needs `pip install datasets`") from None
    datasets.disable_progress_bars()
    p = Path(src).expanduser()
    try:
        if _is_dataset_dir(p):
            ds = load_saved(p, flag)
        elif p.is_file():
            kind = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "text"}.get(p.suffix)
            if kind is None:
                raise DataError(
                    f"{p}: unknown file type {p.suffix!r}; give .txt, .jsonl, .csv, .parquet or a dataset folder"
                )
            ds = datasets.load_dataset(kind, data_files=str(p))
        elif p.exists() or src.startswith((".", "/", "~")):
            raise DataError(
                f"{src} is neither a file nor a saved dataset folder; give a .txt/.jsonl file or a "
                "folder written by Dataset.save_to_disk"
            )
        else:
            name, _, config = src.partition(":")
            ds = datasets.load_dataset(name, config or None)
    except DataError:
        raise
    except Exception as e:
        if not p.exists():
            raise DataError(
                f"{src} is not a file and not a dataset in the local Hugging Face cache "
                f"({type(e).__name__}); download it first (datasets.load_dataset('{src}') on a machine "
                "with network) or pass a file"
            ) from None
        raise DataError(f"cannot read {src} as a dataset: {str(e).splitlines()[0][:200]}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            split = next((s for s in ("test", "validation", "train") if s in ds), splits[0])
        if split not in ds:
            raise DataError(f"{src} has no split {split!r}; choose one of {', '.join(splits)} with --split")
        ds = ds[split]
    if len(ds) == 0:
        raise DataError(f"{src} (split {split}) is empty")
    return [dict(r) for r in ds]


def read_texts(
    src: str | os.PathLike, field: str = "text", split: str | None = None, flag: str = "--examples"
) -> list[str]:
    """Documents of a source: a .txt file is one document; JSONL/datasets give `field` of each record."""
    p = Path(src).expanduser()
    if not p.exists() and (str(src).startswith((".", "/", "~")) or p.suffix in (".txt", ".jsonl", ".json")):
        raise DataError(f"{flag} {src}: no such file")
    if p.is_file() and p.suffix not in (".jsonl", ".json", ".ndjson", ".csv", ".parquet", ".arrow"):
        text = read_utf8(p)
        if not text.strip():
            raise DataError(f"{p} is empty; give a file with some text")
        return [text]
    texts = []
    for rec in read_records(src, split, flag):
        value = _get(rec, field, str(src), "--field")
        if not isinstance(value, str):
            raise DataError(
                f"{src}: field {field!r} holds {type(value).__name__}, not text; choose another with --field"
            )
        if value.strip():
            texts.append(check_text(value, f"{src}: field {field!r}"))
    if not texts:
        raise DataError(f"{src}: every {field!r} is empty")
    return texts


@dataclass
class MCItem:
    """One multiple-choice item: the prompt, its choices (continuations), the gold index."""

    id: str
    context: str
    choices: list[str]
    label: int
    # per-choice contexts (Winogrande's partial scoring: each option fills the blank in its own context and
    # the rest of the sentence, the same for every option, is what is scored); None: `context` for all.
    # With contexts, choices[c] is the continuation scored after contexts[c] (target_delimiter before it).
    contexts: list[str] | None = None
    # lm-evaluation-harness's target_delimiter: what is scored is target_delimiter + choice, and lm-eval's
    # acc_norm divides by len(choice) (without the delimiter); " " for lm-eval's arc/hellaswag/mmlu formats
    target_delimiter: str = ""


UNLABELLED = (
    "label -1 marks an unlabelled row (Hugging Face's convention for a split without answers, such as a test "
    "split), which cannot be scored: score a labelled split (--split validation) or drop the unlabelled rows"
)
DEFAULT_FIELDS = {"context": "context", "choices": "choices", "label": "label", "id": "id"}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def parse_label(value, n_choices: int, where: str, labels: list | None = None) -> int:
    """A gold label given as index (0-based int, integral float or digit string) or as letter (A, B, ...)."""
    if labels is not None and value in labels:  # e.g. ARC's choices.label list
        return labels.index(value)
    span = f"0..{n_choices - 1} or A..{LETTERS[min(n_choices, 26) - 1]}"
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float, str)):
        raise DataError(f"{where}: label {value!r} is a {type(value).__name__}, not an index ({span})")
    if isinstance(value, float):
        if not value.is_integer():
            raise DataError(f"{where}: label {value!r} is a float, not an index; write one of {span}")
        value = int(value)
    if isinstance(value, str):
        v = value.strip()
        if v.isdigit():
            value = int(v)
        elif len(v) == 1 and v.upper() in LETTERS:
            n = LETTERS.index(v.upper())
            if n >= n_choices:
                raise DataError(
                    f"{where}: label {value!r} is letter {n + 1} but the item has {n_choices} choices ({span})"
                )
            return n
        else:
            raise DataError(f"{where}: label {value!r} is neither an index nor a letter; write one of {span}")
    if value == -1:
        raise DataError(f"{where}: {UNLABELLED}")
    if not 0 <= value < n_choices:
        raise DataError(f"{where}: label {value!r} is out of range: the item has {n_choices} choices ({span})")
    return value


def _choices(value, where: str) -> list[str]:
    """At least two strings: ranking classification cannot score an item with one choice."""
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise DataError(f"{where}: choices must be a list of strings, not {json.dumps(value, default=str)[:60]}")
    if len(value) < 2:
        raise DataError(
            f"{where}: has {len(value)} choice(s); ranking classification needs at least 2 "
            "(one choice would always be 'right'); fix or drop the item"
        )
    return [check_text(c, f"{where}: choice") for c in value]


def load_mc_task(
    src: str | os.PathLike,
    fields: dict[str, str] | None = None,
    split: str | None = None,
    context_template: str | None = None,
    flag: str = "--task",
) -> list[MCItem]:
    """Multiple-choice items from JSONL or a dataset. fields renames context/choices/label/id
    (dotted paths allowed: ARC's choices.text); context_template formats the context from the record
    ("Question: {question}\\nAnswer:"), used instead of the context field when given."""
    f = {**DEFAULT_FIELDS, **(fields or {})}
    items = []
    for i, rec in enumerate(read_records(src, split, flag)):
        item_id = rec.get(f["id"], i)
        where = f"{src} item {item_id!r}" if f["id"] in rec else f"{src} item {i}"
        if context_template is not None:
            for name in (n for _, n, _, _ in string.Formatter().parse(context_template) if n):
                if name not in rec:
                    raise DataError(f"{where}: the context template needs field {name!r}, which is not there")
                if not isinstance(rec[name], str):
                    raise DataError(f"{where}: field {name!r} is {json.dumps(rec[name], default=str)[:40]}, not text")
            context = context_template.format(**rec)
        else:
            context = _get(rec, f["context"], str(src), "--map context=FIELD")
        if not isinstance(context, str):
            shown = json.dumps(context, default=str)[:40]
            raise DataError(f"{where}: context is {shown}, not text; fix or drop the item")
        choices = _choices(_get(rec, f["choices"], str(src), "--map choices=FIELD"), where)
        label_labels = None
        if "." in f["choices"]:  # ARC: choices.text with choices.label holding the letters
            parent = _get(rec, f["choices"].rsplit(".", 1)[0], str(src), "--map")
            label_labels = parent.get("label") if isinstance(parent, dict) else None
        label = parse_label(_get(rec, f["label"], str(src), "--map label=FIELD"), len(choices), where, label_labels)
        items.append(MCItem(str(item_id), check_text(context, f"{where}: context"), choices, label))
    if not items:
        raise DataError(f"{src} holds no items")
    return items


def fewshot_prompt(items: list[MCItem], separator: str = "\n\n") -> str:
    """Demonstrations with their gold answers appended: context + target_delimiter + gold choice (the gold's own
    context for items with per-choice contexts), joined by separator."""
    return "".join(
        (it.contexts[it.label] if it.contexts else it.context) + it.target_delimiter + it.choices[it.label] + separator
        for it in items
    )


def split_fewshot(items: list[MCItem], shots: int, seed: int = 0) -> tuple[list[MCItem], list[MCItem]]:
    """(demonstrations, remaining items): `shots` items drawn with a seeded RNG, removed from the rest."""
    if shots < 0:
        raise UsageError("--shots must be >= 0")
    if shots >= len(items):
        raise UsageError(f"--shots {shots} leaves no item to score: the task has {len(items)} items")
    rng = random.Random(seed)
    idx = sorted(rng.sample(range(len(items)), shots))
    chosen = set(idx)
    return [items[i] for i in idx], [it for i, it in enumerate(items) if i not in chosen]


def items_hash(items: list[MCItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(asdict(it), sort_keys=True).encode())
    return h.hexdigest()[:16]


def file_hash(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


@dataclass
class Task:
    name: str
    spec: str
    format: str
    items: list[MCItem]  # the scored items (demonstrations removed, --limit applied)
    demos: list[MCItem]
    prompt: str  # the few-shot prefix put before every scored item's context
    n_total: int  # items in the source

    def describe(self) -> dict:
        src = Path(self.spec)
        return {
            "spec": self.spec,
            "format": self.format,
            "items_in_source": self.n_total,
            "items_scored": len(self.items),
            "shots": len(self.demos),
            "fewshot_ids": [d.id for d in self.demos],
            "items_hash": items_hash(self.items),
            "file_hash": file_hash(src) if src.is_file() else None,
        }
