"""Reading files of a folder that came from anywhere: stay inside it, read only regular files, strict JSON.

`member_stat` / `folder_file` follow a symlink only when it stays inside the folder, or when the folder is
a Hugging Face cache snapshot (`<repo>/snapshots/<rev>/name -> ../../blobs/<hash>`) and the link points
into the blobs of that same repository. `RegularFile` opens a file after checking with stat that it is a
regular file (a FIFO or device never blocks the reader). `parse_json_bytes` is emo_slice.safejson's bounded
JSON (depth, integer size, UTF-8 only, no duplicate keys, no NaN/Infinity).

`check_tree(root, kind=...)` applies the same rule to everything under a folder before it is read (run folders
on resume, saved datasets): regular files and folders only, links only to inside. `cache_ref` reads a Hugging
Face cache ref (`refs/main`) as huggingface_hub would, refusing a FIFO or a ref that names no plain commit.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from emo_slice.errors import CheckpointError, EmoSliceError
from emo_slice.safejson import parse_json, short

__all__ = [
    "REDOWNLOAD",
    "RegularFile",
    "cache_ref",
    "cache_repo",
    "check_tree",
    "folder_file",
    "hub_cache_dir",
    "member_stat",
    "parse_json_bytes",
    "short",
]

REDOWNLOAD = "re-download the checkpoint or re-save it"


def _within(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def _hf_blob(root: Path, target: Path) -> bool:
    """True when root is a Hugging Face cache snapshot (<repo>/snapshots/<rev>) and target a blob of that repo."""
    return root.parent.name == "snapshots" and target.parent == root.parent.parent / "blobs"


def _target(path: Path, error: type[EmoSliceError]) -> Path:
    try:
        return path.resolve(strict=False)
    except (OSError, RuntimeError):
        raise error(f"{path} is a symlink loop; replace it with the file itself") from None


def _outside(path: Path, target: Path, kind: str, error: type[EmoSliceError], hint: str) -> EmoSliceError:
    return error(
        f"{path} is a symlink to {target}, outside the {kind}; emo-slice reads only files inside it: replace "
        f"the link with a copy of the file, or {hint}"
    )


def member_stat(
    folder: Path,
    name: str,
    real_folder: Path | None = None,
    *,
    kind: str = "checkpoint folder",
    error: type[EmoSliceError] = CheckpointError,
) -> os.stat_result | None:
    """os.stat of folder/name (None if absent), following a symlink only when it stays inside the folder or
    is a Hugging Face cache link into the same repository's blobs; a link elsewhere is refused. `name` may be
    a relative path (data/train/index.json): a link anywhere on the way counts, resolved against the folder."""
    path = Path(folder) / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise error(f"cannot read {path} ({e.strerror}); check its permissions") from None
    real = real_folder or Path(folder).resolve()
    if stat.S_ISLNK(st.st_mode) or len(Path(name).parts) > 1:
        target = _target(path, error)
        if not (_within(real, target) or _hf_blob(real, target)):
            raise _outside(path, target, kind, error, "re-download the checkpoint")
    if not stat.S_ISLNK(st.st_mode):
        return st
    try:
        return os.stat(path)
    except OSError:
        return None  # a dangling link: nothing there


def folder_file(
    folder: Path,
    name: str,
    what: str = "file",
    real_folder: Path | None = None,
    *,
    kind: str = "checkpoint folder",
    error: type[EmoSliceError] = CheckpointError,
    hint: str = REDOWNLOAD,
) -> Path:
    """folder/name, checked: it exists, stays inside the folder (see member_stat) and is a regular file."""
    path = Path(folder) / name
    st = member_stat(folder, name, real_folder, kind=kind, error=error)
    if st is None:
        raise error(f"{name} ({what}) is missing from {folder}: {hint}")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} ({what}) is not a regular file (a folder, FIFO or device): {hint}")
    return path


def check_tree(root: Path, *, kind: str, error: type[EmoSliceError] = CheckpointError, hint: str = REDOWNLOAD) -> None:
    """The one rule for a folder emo-slice reads, applied to everything under it before anything is read: each
    entry is a folder or a regular file, or a link that resolves inside root (or, for a Hugging Face cache
    snapshot, into its repository's blobs) to one. Only stat is used (a FIFO is never opened)."""
    root = Path(root)
    real = root.resolve()
    for here, dirs, files in os.walk(root, onerror=_walk_error(error)):
        for name in dirs + files:
            path = Path(here) / name
            try:
                mode = os.lstat(path).st_mode
            except OSError as e:
                raise error(f"cannot read {path} ({e.strerror}); check its permissions") from None
            if stat.S_ISLNK(mode):
                target = _target(path, error)
                if not (_within(real, target) or _hf_blob(real, target)):
                    raise _outside(path, target, kind, error, hint)
                try:
                    mode = os.stat(path).st_mode
                except OSError:
                    raise error(f"{path} is a link to nothing ({target}); remove it, or {hint}") from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise error(
                    f"{path} is not a regular file (a FIFO, socket or device); emo-slice reads only regular files: "
                    f"remove it from the {kind}"
                )


def _walk_error(error: type[EmoSliceError]):
    def fail(e: OSError):
        raise error(f"cannot read {e.filename} ({e.strerror}); check its permissions") from None

    return fail


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it (HF_HUB_CACHE, else HF_HOME/hub), read at each call."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cache_repo(repo: str, kind: str) -> Path:
    """The cache folder of a Hub repository: `<cache>/<kind>s--org--name` (kind: model or dataset)."""
    return hub_cache_dir() / f"{kind}s--{repo.replace('/', '--')}"


def cache_ref(base: Path, revision: str = "main") -> str | None:
    """The commit `base/refs/<revision>` names (None when absent), read as huggingface_hub would but refusing
    (CheckpointError, one line) a ref that is not a regular file inside the repository folder (a FIFO would
    block huggingface_hub's open) or does not name a snapshot folder."""
    name = f"refs/{revision}"
    st = member_stat(base, name, kind="cache repository folder")
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(
            f"{base / name} is not a regular file (a folder, FIFO or device), so the Hugging Face cache is "
            f"damaged: delete {base} and download the repository again"
        )
    with RegularFile(base / name) as f:
        commit = f.read(256).decode("utf-8", errors="replace").strip()
    if not _REF.fullmatch(commit) or commit in (".", ".."):
        raise CheckpointError(
            f"{base / name} holds {short(commit)}, not a commit; delete {base} and download the repository again"
        )
    return commit


_REF = re.compile(r"[A-Za-z0-9._-]{1,128}")


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


def parse_json_bytes(raw: bytes) -> object:
    """Strict, bounded JSON from bytes (emo_slice.safejson.parse_json). Raises ValueError saying what is wrong."""
    return parse_json(raw)
