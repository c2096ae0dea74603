"""Output locks, stale temporaries and write errors: the parts of `emo_slice.artifacts` about concurrency.

- `output_lock(out)`: an exclusive lock for as long as a command writes `out`: `fcntl.flock` on
  `.OUT.lock` beside the output, holding the pid (for the message a second writer gets). The kernel
  releases it when a process dies (kill -9 included), so a lock is never stale; the file a dead process
  leaves is taken over by the next writer. Re-entrant within a process. While taking it, temporaries of
  the same output left by dead processes (`.OUT.tmp-PID`, `.OUT.old-PID`) are removed.
- `lock_holder(out)`: the pid of another process writing `out`, for refusing before any work.
- `write_error(e, out)` / `os_error_message(e)`: an OSError as one line naming the path, and what to do.

No torch import here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from emo_slice.errors import EmoSliceError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock is taken
    fcntl = None

_HELD: dict[str, int] = {}  # outputs this process holds the lock of -> depth
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_HINTS = {
    errno.ENOSPC: "the disk is full; free some space or choose another location",
    errno.EDQUOT: "the disk quota is exceeded; free some space or choose another location",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "permission denied; choose a folder you can write to",
}


# ---------------------------------------------------------------------------------------------
# OSError -> one line
# ---------------------------------------------------------------------------------------------


def os_error_message(e: OSError) -> str:
    """`PATH: strerror; what to do` for an OSError nothing else explained (e.g. an unreadable source file)."""
    where = f"{e.filename}: " if e.filename is not None else ""
    reason = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno, "check that the path exists and that you may read and write it")
    if e.errno in (errno.EACCES, errno.EPERM):
        hint = "check its permissions"
    return f"{where}{reason}; {hint}"


def write_error(e: OSError, out: Path) -> EmoSliceError:
    reason = e.strerror or str(e) or type(e).__name__
    hint = _HINTS.get(e.errno, f"check that {out.parent} is a folder you can write to")
    return EmoSliceError(f"cannot write {out} ({reason}): {hint}; nothing was written")


def is_write_error(e: OSError, *places: Path) -> bool:
    """An OSError about the output (its temporary, lock or folder), not about a file being read."""
    if e.filename is None:
        return e.errno in _WRITE_ERRNOS
    p = Path(os.path.abspath(e.filename))
    return any(p == q or q in p.parents for q in places)


# ---------------------------------------------------------------------------------------------
# Locks and stale temporaries
# ---------------------------------------------------------------------------------------------


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip() or "x")
    except (OSError, ValueError):
        return None


def lock_holder(out: str | os.PathLike) -> int | None:
    """The pid of another process holding the lock of `out` (0 if unknown), or None when nobody holds it."""
    out = Path(out).expanduser().absolute()
    lock = _lock_path(out)
    if fcntl is None or str(out) in _HELD or not lock.is_file():
        return None
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return _read_pid(lock) or 0
    except OSError:
        return None
    finally:
        os.close(fd)  # closing drops a shared lock taken here


def locked_message(out: Path, pid: int | None, flag: str) -> str:
    by = f" (pid {pid})" if pid else ""
    return (
        f"{flag} {out} is being written by another emo-slice process{by}; wait for it to finish or choose another path"
    )


def _acquire(out: Path, flag: str) -> int:
    """Open and flock `.OUT.lock` (retrying if the previous holder removed the file meanwhile); write our pid."""
    lock = _lock_path(out)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(e, out) from None
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(locked_message(out, _read_pid(lock), flag)) from None
        except OSError:  # a file system without locks: go on unlocked
            pass
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours, from before the lock was taken: left over (e.g. a reused pid after a crash)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove(p: Path) -> None:
    with contextlib.suppress(OSError):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()


def remove_stale(out: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of `out` (`.OUT.tmp-PID`, `.OUT.old-PID`) whose process is dead; returns them."""
    out = Path(out).expanduser().absolute()
    name, stem, suffix = map(re.escape, (out.name, out.stem, out.suffix))
    pattern = re.compile(rf"\.{name}\.(?:tmp|old)-(\d+)|\.{stem}\.tmp-(\d+){suffix}")
    removed = []
    with contextlib.suppress(OSError):
        for p in out.parent.iterdir():
            m = pattern.fullmatch(p.name)
            if m and not _alive(int(m.group(1) or m.group(2))):
                remove(p)
                removed.append(p)
    return removed


def _make_parents(folder: Path, out: Path) -> list[Path]:
    """mkdir -p folder; returns the folders created (outermost first)."""
    made = []
    for p in reversed([folder, *folder.parents]):
        if not p.exists():
            try:
                p.mkdir()
            except OSError as e:
                for q in reversed(made):
                    with contextlib.suppress(OSError):
                        q.rmdir()
                raise write_error(e, out) from None
            made.append(p)
    return made


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, flag: str = "--out") -> Iterator[Path]:
    """Hold the lock of `out` (refusing with one line if another process holds it); re-entrant.

    On taking it, stale temporaries of `out` are removed; parent folders created for it are removed
    again on release if the output was not written."""
    out = Path(out).expanduser().absolute()
    key = str(out)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield out
        finally:
            _HELD[key] -= 1
        return
    made = _make_parents(out.parent, out)
    try:
        fd = _acquire(out, flag)
    except BaseException:
        _remove_empty(made)
        raise
    _HELD[key] = 1
    try:
        remove_stale(out)
        yield out
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            _lock_path(out).unlink()
        os.close(fd)
        if not out.exists():
            _remove_empty(made)


def _remove_empty(folders: list[Path]) -> None:
    for p in reversed(folders):
        with contextlib.suppress(OSError):
            p.rmdir()


@contextlib.contextmanager
def locked(*outs, flag: str = "--out") -> Iterator[None]:
    """Hold the locks of several outputs for the duration of a command: each a path, or (path, flag) for
    the message; None entries are skipped."""
    with contextlib.ExitStack() as stack:
        for item in outs:
            path, f = item if isinstance(item, tuple) else (item, flag)
            if path is not None:
                stack.enter_context(output_lock(path, f))
        yield
