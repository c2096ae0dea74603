"""An embedded four-domain corpus, generated from what every Python installation has.

The EMO effect needs documents from clearly different domains. Without network or shared data,
emo-slice makes them from the running interpreter:
- `code`: the standard library's Python source, cut at blank lines into pieces;
- `docs`: the docstrings of the standard library's modules, classes and functions (read with `ast`,
  nothing is imported);
- `unicode`: runs of the Unicode character database (`unicodedata`): code point and name per line;
- `arithmetic`: seeded lines of integer arithmetic ("417 + 38 = 455").
Written as JSONL documents `{"id", "domain", "text"}` (train.jsonl, valid.jsonl, and the held-out
documents of each domain in valid/DOMAIN.jsonl) and 4-way
continuation multiple-choice tasks `tasks/DOMAIN.jsonl` built like the shared four-domain corpus' tasks:
context = lines of a held-out document ending with a line break, gold = its next line, distractors =
lines of other held-out documents of the same domain.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import sysconfig
import unicodedata
from pathlib import Path

from emo_slice.artifacts import atomic_output_dir, provenance

DOMAINS = ("code", "docs", "unicode", "arithmetic")


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))


def _pieces(text: str, max_chars: int) -> list[str]:
    out, cur = [], ""
    for block in text.split("\n\n"):
        block = block.strip("\n")
        if not block.strip():
            continue
        if cur and len(cur) + len(block) + 2 > max_chars:
            out.append(cur)
            cur = ""
        cur = (cur + "\n\n" + block) if cur else block[:max_chars]
    if cur:
        out.append(cur)
    return out


def code_docs(budget: int, max_chars: int = 2000) -> list[str]:
    docs, total = [], 0
    for f in _stdlib_files():
        for piece in _pieces(f.read_text(encoding="utf-8", errors="replace"), max_chars):
            if len(piece) > 200:
                docs.append(piece)
                total += len(piece)
        if total >= budget:
            break
    return docs


def docstring_docs(budget: int, max_chars: int = 2000) -> list[str]:
    docs, total = [], 0
    for f in _stdlib_files():
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="replace"))
        except SyntaxError:
            continue
        parts = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80:
                    parts.append(doc.strip())
        for piece in _pieces("\n\n".join(parts), max_chars):
            if len(piece) > 200:
                docs.append(piece)
                total += len(piece)
        if total >= budget:
            break
    return docs


def unicode_docs(budget: int, lines_per_doc: int = 40) -> list[str]:
    names = [(cp, unicodedata.name(chr(cp), "")) for cp in range(0x20, 0x30000)]
    names = [
        (cp, n)
        for cp, n in names
        if n and not n.startswith(("CJK UNIFIED", "HANGUL SYLLABLE", "TANGUT", "YI SYLLABLE", "EGYPTIAN HIEROGLYPH"))
    ]
    docs, total = [], 0
    for i in range(0, len(names), lines_per_doc):
        doc = "\n".join(f"{cp:04X} {n}" for cp, n in names[i : i + lines_per_doc])
        docs.append(doc)
        total += len(doc)
        if total >= budget:
            break
    return docs


def arithmetic_docs(budget: int, lines_per_doc: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs, total = [], 0
    while total < budget:
        lines = []
        for _ in range(lines_per_doc):
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            op = rng.choice("+-*")
            c = a + b if op == "+" else a - b if op == "-" else a * b
            lines.append(f"{a} {op} {b} = {c}")
        doc = "\n".join(lines)
        docs.append(doc)
        total += len(doc)
    return docs


def _is_valid(doc_id: str, share: float) -> bool:
    return int(hashlib.sha256(doc_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < share


def make_tasks(valid: list[dict], n_items: int, seed: int = 0) -> list[dict]:
    """4-way continuation items from held-out documents of one domain."""
    rng = random.Random(seed)
    pool = [ln.strip() for d in valid for ln in d["text"].split("\n") if 3 <= len(ln.strip()) <= 100]
    items = []
    docs = list(valid)
    rng.shuffle(docs)
    for d in docs:
        lines = d["text"].split("\n")
        cands = [i for i in range(3, len(lines)) if 3 <= len(lines[i].strip()) <= 100]
        if not cands:
            continue
        for i in rng.sample(cands, min(3, len(cands))):
            gold = lines[i].strip()
            context = "\n".join(lines[max(0, i - 12) : i]) + "\n"
            distractors = [x for x in rng.sample(pool, min(len(pool), 20)) if x != gold][:3]
            if len(distractors) < 3:
                continue
            label = rng.randrange(4)
            choices = distractors[:label] + [gold] + distractors[label:]
            items.append(
                {
                    "id": f"{d['id']}:{i}",
                    "domain": d["domain"],
                    "context": context[-1500:],
                    "choices": choices,
                    "label": label,
                }
            )
            if len(items) >= n_items:
                return items
    return items


def write_demo_corpus(
    out: str | os.PathLike,
    chars_per_domain: int = 400_000,
    valid_share: float = 0.1,
    task_items: int = 60,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write train.jsonl, valid.jsonl, tasks/DOMAIN.jsonl and corpus.json (provenance) to `out`."""
    makers = {
        "code": code_docs,
        "docs": docstring_docs,
        "unicode": unicode_docs,
        "arithmetic": lambda b: arithmetic_docs(b, seed=seed),
    }
    summary = {}
    with atomic_output_dir(out, overwrite=overwrite, flag="--out") as tmp:
        (tmp / "tasks").mkdir()
        (tmp / "valid").mkdir()
        train, valid = [], []
        for domain, make in makers.items():
            docs = [{"id": f"{domain}/{i}", "domain": domain, "text": t} for i, t in enumerate(make(chars_per_domain))]
            v = [d for d in docs if _is_valid(d["id"], valid_share)]
            train += [d for d in docs if not _is_valid(d["id"], valid_share)]
            valid += v
            tasks = make_tasks(v, task_items, seed)
            with open(tmp / "valid" / f"{domain}.jsonl", "w") as f:
                f.writelines(json.dumps(d) + "\n" for d in v)
            with open(tmp / "tasks" / f"{domain}.jsonl", "w") as f:
                f.writelines(json.dumps(t) + "\n" for t in tasks)
            summary[domain] = {
                "documents": len(docs),
                "valid": len(v),
                "task_items": len(tasks),
                "chars": sum(len(d["text"]) for d in docs),
            }
        random.Random(seed).shuffle(train)
        for name, rows in (("train.jsonl", train), ("valid.jsonl", valid)):
            with open(tmp / name, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        meta = provenance(
            kind="emo-slice demo corpus",
            chars_per_domain=chars_per_domain,
            valid_share=valid_share,
            seed=seed,
            domains=summary,
            python=sysconfig.get_python_version(),
        )
        (tmp / "corpus.json").write_text(json.dumps(meta, indent=2) + "\n")
    return summary
