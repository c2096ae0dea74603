"""Writing artifacts safely: atomic files and folders, output guards, locks, provenance, sizes.

Every file or folder emo-slice writes goes through here:
- `atomic_write_text(path, text)` / `atomic_output_file(path)` / `atomic_output_dir(out)`: written under a
  temporary sibling name (`.OUT.tmp-PID`) and renamed into place, so a crash or Ctrl-C never leaves a
  half-written output; the temporary is removed on any error. Every folder written this way carries a
  marker file, `.emo-slice` (JSON: the command, versions, date, and `files`: the names it wrote there),
  which is what lets `--overwrite` replace it later, and only while it holds nothing else.
- `check_output(out, inputs=..., overwrite=...)`, before any work starts, refuses:
  an output equal to, inside, or holding an input folder (a model is never modified); an output whose
  folder cannot be written (a parent that is a file, no write permission, a read-only file system);
  an output another emo-slice process is writing; and an existing output without `--overwrite`.
  With `--overwrite`, an existing **folder** is replaced only when it is empty or emo-slice made it (its
  marker) and it holds nothing but what the marker lists (a file the user put in it is never deleted); an existing **file** is replaced only when it is a
  regular file, is not one of a model folder's files (a folder holding config.json and weights), and its
  contents say emo-slice wrote an artifact of the output's kind (emo_slice/ownership.py: a results or
  profile JSON's `format`, a PNG's `Software` text, a GGUF key; never the suffix alone: `--out
  package.json --overwrite` is refused). The old output is replaced only after the new one is complete.
- `output_lock(out)` / `locked(*outs)` (emo_slice/locking.py): a command holds the lock of what it
  writes, so a second writer of the same output refuses instead of replacing the first one's work;
  stale temporaries of dead processes (kill -9) are removed when the next writer starts.
- An `OSError` while writing (permission denied, disk full, read-only file system) becomes one
  `EmoSliceError` line naming the output, with the temporary removed.
- `provenance(**extra)`: who wrote an artifact and when (versions, UTC date), recorded in every artifact.

No torch import here: the CLI reaches this module before it knows whether a model will run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

from emo_slice import __version__
from emo_slice.errors import EmoSliceError, UsageError
from emo_slice.locking import (
    is_write_error,
    lock_holder,
    locked,
    locked_message,
    os_error_message,
    output_lock,
    remove,
    remove_stale,
    write_error,
)
from emo_slice.ownership import DESCRIBE, wrote
from emo_slice.safejson import read_json

MARKER = ".emo-slice"
WEIGHT_FILES = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin")


def _tmp_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{os.getpid()}"


# ---------------------------------------------------------------------------------------------
# Output guards
# ---------------------------------------------------------------------------------------------


TEMPORARY = re.compile(r"\..+\.(?:(?:tmp|old)-\d+(?:\.\w+)?|lock|saving|old)")  # emo-slice's own, in passing


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of a folder emo-slice wrote (JSON: created_by, command, versions, date, and `files`, the names
    it wrote there), or None: absent, not a regular file, or not a marker emo-slice wrote."""
    path = Path(folder) / MARKER
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        d = read_json(path, max_bytes=1 << 24)
    except (OSError, EmoSliceError):
        return None
    return d if isinstance(d, dict) and str(d.get("created_by", "")).startswith("emo-slice") else None


def made_by_emo_slice(folder: str | os.PathLike) -> bool:
    """Whether `folder` carries the marker every folder emo-slice writes holds (read, not just seen)."""
    return read_marker(folder) is not None


def foreign_entries(folder: Path, marker: dict) -> list[str] | None:
    """Names in folder the marker does not list as written there (emo-slice's temporaries aside); None when the
    marker lists nothing (a run folder, a quickstart, an older version: not a folder `_check_folder` replaces)."""
    files = marker.get("files")
    if not isinstance(files, list):
        return None
    written = {f for f in files if isinstance(f, str)}
    return sorted(n for n in os.listdir(folder) if n != MARKER and n not in written and not TEMPORARY.fullmatch(n))


def _contents(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name != MARKER]


def _model_folder(folder: Path) -> bool:
    """A checkpoint folder: config.json beside weights."""
    return (folder / "config.json").is_file() and any(any(folder.glob(pat)) for pat in WEIGHT_FILES)


def _check_folder(dst: Path, out, overwrite: bool, flag: str) -> None:
    if not dst.exists():
        return
    if not dst.is_dir():
        raise UsageError(f"{flag} {out} is a file; give a folder path")
    if not _contents(dst):
        return
    if not overwrite:
        raise UsageError(f"{flag} {out} already exists and is not empty; choose another folder or pass --overwrite")
    marker = read_marker(dst)
    if marker is None:
        raise UsageError(
            f"{flag} {out} holds files emo-slice did not write (no {MARKER} marker); --overwrite only replaces "
            "a folder emo-slice made or an empty one: delete it yourself or choose another folder"
        )
    foreign = foreign_entries(dst, marker)
    if foreign is None:
        raise UsageError(
            f"{flag} {out} was made by {marker.get('created_by')}, but not as this kind of output (its marker lists "
            "no files: a run folder, a quickstart, or an older version); --overwrite does not replace it: "
            "delete it yourself or choose another folder"
        )
    if foreign:
        raise UsageError(
            f"{flag} {out} holds {foreign[0]!r}, which emo-slice did not write there; --overwrite only replaces what "
            "emo-slice wrote: move it out, or choose another folder"
        )


def _check_file(
    dst: Path, out, overwrite: bool, flag: str, suffixes: Iterable[str] | None, kind: str | None = None
) -> None:
    if dst.is_dir():
        raise UsageError(f"{flag} {out} is a folder; give a file name")
    if not (dst.exists() or dst.is_symlink()):
        return
    if not overwrite:
        raise UsageError(f"{flag} {out} already exists; choose another name or pass --overwrite")
    if not stat.S_ISREG(dst.lstat().st_mode):
        raise UsageError(f"{flag} {out} is not a regular file; --overwrite only replaces files; choose another name")
    if _model_folder(dst.parent):
        raise UsageError(
            f"{flag} {out} is a file of the model folder {dst.parent}; emo-slice never replaces a checkpoint's "
            "files; choose a path outside it"
        )
    suffixes = tuple(suffixes or ())
    if suffixes and dst.suffix.lower() not in suffixes:
        raise UsageError(
            f"{flag} {out} exists and is not a {' or '.join(suffixes)} file; --overwrite only replaces a file "
            "emo-slice can have written there; choose another name"
        )
    if kind is None or not wrote(dst, kind):
        what = DESCRIBE.get(kind, "a file emo-slice wrote")
        raise UsageError(
            f"{flag} {out} exists and is not {what} (its contents do not say so); --overwrite only replaces what "
            "emo-slice wrote: choose another name, or delete the file yourself"
        )


def check_writable(dst: Path, out, flag: str = "--out") -> None:
    """Refuse (one line) an output whose folder cannot be written: the nearest existing ancestor of dst's
    folder is a file, or a folder we may not write in (permissions, read-only file system)."""
    anc = dst.parent
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise UsageError(f"{flag} {out}: {anc} is a file, not a folder; choose another path")
    if not os.access(anc, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only(anc) else "permission denied"
        raise UsageError(f"{flag} {out}: cannot write in {anc} ({reason}); choose a folder you can write to")


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_output(
    out: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    flag: str = "--out",
    folder: bool = False,
    suffixes: Iterable[str] | None = None,
    kind: str | None = None,
) -> Path:
    """Validate an output path before any work starts (see the module docstring); returns it absolute.

    folder: the output is a folder (else a file); kind: what a file output is (emo_slice.ownership.KINDS:
    results, profile, sweep, predictions, png, gguf), so that an existing file is replaced with overwrite only
    when its contents say emo-slice wrote one (without a kind, never); suffixes: also required of an existing
    file's name (lower case, with the dot). Nothing is written."""
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
        _check_folder(dst, out, overwrite, flag)
    else:
        _check_file(dst, out, overwrite, flag, suffixes, kind)
    check_writable(dst, out, flag)
    pid = lock_holder(dst)
    if pid is not None:
        raise UsageError(locked_message(dst, pid, flag))
    return dst


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to path through a temporary sibling renamed into place."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes to path through a temporary sibling renamed into place (under the output's lock)."""
    given = Path(path).expanduser()
    with atomic_output_file(given) as tmp:
        tmp.write_bytes(data)
    return given


@contextlib.contextmanager
def atomic_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write (by any means); renamed to `path` on success, removed on error."""
    path = Path(path).expanduser().absolute()
    with output_lock(path):
        tmp = (
            path.parent / f".{path.stem}.tmp-{os.getpid()}{path.suffix}"
        )  # keeps the suffix (savefig picks the format)
        try:
            yield tmp
            os.replace(tmp, path)
        except OSError as e:
            if is_write_error(e, tmp, path):
                raise write_error(e, path) from None
            raise
        finally:
            remove(tmp)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False, flag: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success mark it (`.emo-slice`) and rename it to `out`, on error
    remove it. An `out` that holds files is refused unless overwrite, and even then unless emo-slice made
    it; the old folder is replaced only after the new one is complete."""
    out = Path(out).expanduser().absolute()
    with output_lock(out, flag):
        _check_folder(out, out, overwrite, flag)
        tmp, old = _tmp_name(out, "tmp"), _tmp_name(out, "old")
        try:
            remove(tmp)
            tmp.mkdir()
            yield tmp
            _write_marker(tmp)
            _swap_in(tmp, out, old)
        except OSError as e:
            if is_write_error(e, tmp, out, old):
                raise write_error(e, out) from None
            raise
        finally:
            remove(tmp)


def _swap_in(tmp: Path, out: Path, old: Path) -> None:
    """Rename tmp to out; an existing out is moved aside first and put back if the rename fails."""
    moved = out.exists() or out.is_symlink()
    if moved:
        remove(old)
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if moved:
            os.replace(old, out)
        raise
    if moved:
        remove(old)


def _write_marker(folder: Path) -> None:
    """The marker of a finished output folder: what wrote it and the names it holds (its `files`)."""
    write_marker(folder, files=sorted(n for n in os.listdir(folder) if n != MARKER))


def write_marker(folder: Path, created_by: str = "emo-slice", **extra) -> None:
    """Write folder/.emo-slice: created_by, the command line, versions, date, and extra fields."""
    command = (
        shlex.join(["emo-slice", *sys.argv[1:]])
        if "emo_slice" in sys.argv[0] or "emo-slice" in sys.argv[0]
        else shlex.join(sys.argv)
    )
    record = provenance(created_by=created_by, command=command, **extra)
    (folder / MARKER).write_text(json.dumps(record, indent=1) + "\n")


def provenance(**extra) -> dict:
    """Who wrote an artifact and when: emo-slice, torch and Python versions, UTC date, plus extra fields."""
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


__all__ = [
    "MARKER",
    "atomic_output_dir",
    "atomic_output_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output",
    "check_writable",
    "lock_holder",
    "locked",
    "made_by_emo_slice",
    "read_marker",
    "write_marker",
    "os_error_message",
    "output_lock",
    "parse_size",
    "provenance",
    "remove_stale",
]
