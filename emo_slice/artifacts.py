"""Writing artifacts safely: atomic files and folders, output guards, provenance, sizes.

Every file or folder emo-slice writes goes through here:
- `atomic_write_text(path, text)` / `atomic_output_dir(out)`: written under a temporary sibling name and
  renamed into place, so a crash or Ctrl-C never leaves a half-written output; the temporary is removed
  on any error.
- `check_output(out, inputs=..., overwrite=...)`: refuses an output equal to, inside, or holding an input
  folder (a model is never modified), and an existing output without `--overwrite`.
- `provenance(**extra)`: who wrote an artifact and when (versions, UTC date), recorded in every artifact.

No torch import here: the CLI reaches this module before it knows whether a model will run.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from emo_slice.errors import UsageError


def _tmp_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}"


def check_output(
    out: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    flag: str = "--out",
    folder: bool = False,
) -> Path:
    """Validate an output path before any work starts; returns it absolute.

    Refuses: an output equal to or inside an input folder, or holding an input; an existing output
    without overwrite (an empty folder is fine for folder outputs); a folder where a file is wanted.
    """
    dst = Path(out).expanduser().absolute()
    real = dst.resolve()
    for src in inputs:
        s = Path(src).expanduser().resolve()
        if real == s:
            raise UsageError(f"{flag} {out} is the input {s}; inputs are never modified, choose another path")
        if s in real.parents:
            raise UsageError(
                f"{flag} {out} is inside the input {s}; inputs are never modified, choose a path outside it"
            )
        if real in s.parents:
            raise UsageError(f"{flag} {out} contains the input {s}; choose a path outside it")
    if folder:
        if dst.exists() and not dst.is_dir():
            raise UsageError(f"{flag} {out} is a file; give a folder path")
        if dst.exists() and any(dst.iterdir()) and not overwrite:
            raise UsageError(f"{flag} {out} already exists and is not empty; choose another folder or pass --overwrite")
    else:
        if dst.is_dir():
            raise UsageError(f"{flag} {out} is a folder; give a file name")
        if dst.exists() and not overwrite:
            raise UsageError(f"{flag} {out} already exists; choose another name or pass --overwrite")
    return dst


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to path through a temporary sibling renamed into place."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, "tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write (by any means); renamed to `path` on success, removed on error."""
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"  # keeps the suffix (savefig picks the format)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success rename it to `out`, on error remove it.

    Refuses an `out` that already holds files unless overwrite (then the old folder is replaced only
    after the new one is complete).
    """
    out = Path(out).expanduser().absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UsageError(f"{flag} {out} already exists and is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(out, "tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = _tmp_name(out, "old")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


def provenance(**extra) -> dict:
    """Who wrote an artifact and when: emo-slice, torch and Python versions, UTC date, plus extra fields."""
    from emo_slice import __version__

    return {
        "emo_slice_version": __version__,
        "torch_version": _torch_version(),
        "python_version": sys.version.split()[0],
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _torch_version() -> str | None:
    if "torch" in sys.modules:
        return sys.modules["torch"].__version__
    try:
        from importlib.metadata import version

        return version("torch")
    except Exception:  # pragma: no cover - torch is a dependency
        return None


def parse_size(text: str | int, flag: str = "--max-shard-size") -> int:
    """'5GB' / '500MB' / '2GiB' / 1234 -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not m:
        raise UsageError(f"{flag} {text!r} is not a size; write e.g. 500MB or 5GB")
    unit = m.group(2).rstrip("B") or ""
    base = 1024 if unit.endswith("I") else 1000
    mult = base ** {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    n = int(float(m.group(1)) * mult)
    if n <= 0:
        raise UsageError(f"{flag} must be positive")
    return n
