"""Atomic file writes: a temporary file in the target directory, fsync, then ``os.replace``.

A reader (or a re-run after ``kill -9``) sees either the old file or the complete new one, never
a truncated file under the final name.

The temporary file is ``.<name>.<host>-<pid>.<random>.tmp``: a writer killed mid-write (``kill
-9``, the machine's power) leaves it behind, and the next writer of the same file removes those
whose process is gone (same host, no such pid; see :func:`remove_dead_temps`), never a live
writer's. A write that fails (a full disk: ``ENOSPC``; a file-size limit; permissions) raises an
``OSError`` of the same errno whose message names the file being written.
"""

from __future__ import annotations

import hashlib
import os
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_HOST = socket.gethostname().replace("/", "_") or "localhost"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # this process: another thread's write
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # another user's live process (or an absurd pid: not ours to judge)
    return True


def temp_owner(path: str | os.PathLike, temp_name: str) -> tuple[str, int] | None:
    """(host, pid) of the writer of ``temp_name``, a temporary sibling of ``path`` named as
    :func:`atomic_open` names them (``.<name>.<host>-<pid>.<random>.tmp``) or as a writer that
    keeps one temporary file per process does (``.<name>.<pid>.tmp``: this host); None for any
    other name (an older writer's: its owner cannot be told)."""
    head, tail = f".{Path(path).name}.", ".tmp"
    if not (temp_name.startswith(head) and temp_name.endswith(tail)) or len(temp_name) <= len(head) + len(tail):
        return None
    middle = temp_name[len(head) : -len(tail)]
    if middle.isdigit():
        return _HOST, int(middle)
    owner, _, _random = middle.rpartition(".")
    host, _, pid = owner.rpartition("-")
    if not (host and pid.isdigit()):
        return None
    return host, int(pid)


def remove_dead_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``path`` whose writer is dead: written on this host by
    a process that no longer exists (killed mid-write). A live writer's, another host's and an
    unrecognised name's are kept. Returns the paths removed."""
    path = Path(path)
    head = f".{path.name}."
    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(head) and n.endswith(".tmp")]
    except OSError:
        return removed
    for name in names:
        owner = temp_owner(path, name)
        if owner is None or owner[0] != _HOST or _pid_alive(owner[1]):
            continue
        try:
            os.unlink(path.parent / name)
        except FileNotFoundError:
            continue
        removed.append(path.parent / name)
    return removed


def _naming(exc: OSError, path: Path, tmp: str | None) -> OSError:
    """``exc`` again, with the final path as its filename (a write error on a file descriptor
    names no file; one on the temporary file names a name the user never asked for)."""
    name = exc.filename
    ours = name is None or name == tmp or os.path.basename(os.fsdecode(name)).startswith(f".{path.name}.")
    if exc.errno is None or not ours:
        return exc  # not a write of this file's (an error naming another file, a custom error)
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on clean exit it replaces ``path``.
    Temporary files of dead writers of ``path`` are removed first; an ``OSError`` while writing
    names ``path``."""
    if "w" not in mode:
        raise ValueError("atomic_open is for writing")
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _naming(exc, path, tmp) from exc
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path, tmp) from exc
        raise


@contextmanager
def atomic_database(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling path for a database file that a database engine writes itself (DuckDB:
    the file and its ``.wal``); on clean exit the file is fsynced and renamed over ``path``; the
    temporary file and its ``.wal`` are gone either way. Dead writers' temporary files of
    ``path`` (and their ``.wal``) are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for dead in remove_dead_temps(path):
        Path(f"{dead}.wal").unlink(missing_ok=True)
    tmp = path.with_name(f"{_temp_prefix(path)}db.tmp")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.wal").unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory of ``path`` to fill; on clean exit it replaces ``path``.

    A reader sees the old directory or the complete new one, never a half-written one under the
    final name: the old one is renamed aside, the new one renamed in, then the old one deleted.
    On an error the temporary directory is removed and ``path`` is left as it was.
    """
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if path.exists():
            retired = path.parent / f".{path.name}.old-{os.getpid()}"
            path.rename(retired)
            staging.rename(path)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
