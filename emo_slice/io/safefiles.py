"""Reading files of a folder that came from anywhere: stay inside it, read only regular files, strict JSON.

`member_stat` / `folder_file` follow a symlink only when it stays inside the folder, or when the folder is
a Hugging Face cache snapshot (`<repo>/snapshots/<rev>/name -> ../../blobs/<hash>`) and the link points
into the blobs of that same repository. `RegularFile` opens a file after checking with stat that it is a
regular file (a FIFO or device never blocks the reader). `parse_json_bytes` is JSON as the safetensors
library reads it, stricter: UTF-8 only, no duplicate keys, no NaN/Infinity.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from emo_slice.errors import CheckpointError

REDOWNLOAD = "re-download the checkpoint or re-save it"


def short(value, limit: int = 60) -> str:
    """repr of a value from a file, cut to one short line (a hostile file may hold anything)."""
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _within(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def _hf_blob(root: Path, target: Path) -> bool:
    """True when root is a Hugging Face cache snapshot (<repo>/snapshots/<rev>) and target a blob of that repo."""
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def member_stat(folder: Path, name: str, real_folder: Path | None = None) -> os.stat_result | None:
    """os.stat of folder/name (None if absent), following a symlink only when it stays inside the folder or
    is a Hugging Face cache link into the same repository's blobs; a link elsewhere is refused."""
    path = Path(folder) / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror}); check its permissions") from None
    if not stat.S_ISLNK(st.st_mode):
        return st
    real = real_folder or Path(folder).resolve()
    try:
        target = path.resolve(strict=False)
    except (OSError, RuntimeError):
        raise CheckpointError(f"{path} is a symlink loop; replace it with the file itself") from None
    if not (_within(real, target) or _hf_blob(real, target)):
        raise CheckpointError(
            f"{path} is a symlink to {target}, outside the checkpoint folder; emo-slice reads only files inside "
            "it: replace the link with a copy of the file, or re-download the checkpoint"
        )
    try:
        return os.stat(path)
    except OSError:
        return None  # a dangling link: nothing there


def folder_file(folder: Path, name: str, what: str = "file", real_folder: Path | None = None) -> Path:
    """folder/name, checked: it exists, stays inside the folder (see member_stat) and is a regular file."""
    path = Path(folder) / name
    st = member_stat(folder, name, real_folder)
    if st is None:
        raise CheckpointError(f"{name} ({what}) is missing from {folder}: {REDOWNLOAD}")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} ({what}) is not a regular file (a folder, FIFO or device): {REDOWNLOAD}")
    return path


class RegularFile:
    """open(path, "rb") that refuses anything but a regular file (stat before opening, so a FIFO never blocks)."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            if not stat.S_ISREG(os.stat(self.path).st_mode):
                raise CheckpointError(f"{self.path} is not a regular file (a folder, FIFO or device): {REDOWNLOAD}")
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
            self.f = os.fdopen(fd, "rb")
            self.size = os.fstat(fd).st_size
        except FileNotFoundError:
            raise CheckpointError(f"{self.path.name} is missing from {self.path.parent}: {REDOWNLOAD}") from None
        except OSError as e:
            raise CheckpointError(f"cannot read {self.path} ({e.strerror}); check its permissions") from None
        return self

    def read(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except OSError as e:
            raise CheckpointError(f"cannot read {self.path} ({e.strerror}); check the file") from None

    def __exit__(self, *exc) -> None:
        self.f.close()


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"key {short(dup)} appears twice")
    return d


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def parse_json_bytes(raw: bytes) -> object:
    """Strict JSON from bytes: UTF-8 only, no duplicate keys, no NaN/Infinity. Raises ValueError."""
    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} at byte {e.pos}") from None
