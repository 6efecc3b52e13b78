"""Small file-system helpers shared by the directory sink and the spool.

Snapshots hold device secrets (``/export show-sensitive``), so everything is
written owner-only, and durably: a sink's ``publish`` returning means the bytes
reached the disk, not just the page cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from pathlib import Path
from urllib.parse import quote, unquote

FILE_MODE = 0o600
DIR_MODE = 0o700

# A file name is at most 255 bytes; leave room for the spool's time/sequence prefix.
_MAX_NAME = 150


def safe_name(device_id: str) -> str:
    """A file-name-safe, readable, collision-free form of a device id.

    Ids are usually UUIDs or host names and come back unchanged; anything else
    is percent-encoded (reversible with ``device_of``). Absurdly long ids are
    shortened with a digest, which is unique but no longer reversible.
    """
    name = quote(device_id, safe="-_.")
    if name.startswith("."):  # no hidden files, no "." or ".."
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(device_id.encode()).hexdigest()[:16]
        name = f"{name[:_MAX_NAME - 18]}~{digest}"
    return name or "~"  # an empty id; "~" marks names whose id is read from the entry


def device_of(name: str) -> str | None:
    """The device id behind ``safe_name``'s result, or None if it was shortened."""
    return None if "~" in name else unquote(name)


def ensure_dir(path: Path) -> Path:
    """Create a directory (and parents) owner-only if missing; return it."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (large configs, signals)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def append_line(path: Path, line: bytes) -> None:
    """Append ``line`` whole and durably; several processes may append to the same file.

    One writer at a time (an exclusive ``flock``); a line cut short by a full disk is
    removed again, so the file stays valid JSON Lines."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            start = os.fstat(fd).st_size
            try:
                write_all(fd, line)
                os.fsync(fd)
            except OSError:
                os.ftruncate(fd, start)
                raise
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def write_tmp(directory: Path, final_name: str, data: bytes) -> Path:
    """Write ``data`` to a fresh, fsynced hidden file in ``directory``; return its path."""
    tmp = directory / f".tmp-{os.getpid()}-{threading.get_ident()}-{final_name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    return tmp


def atomic_replace(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, whole."""
    tmp = write_tmp(path.parent, path.name, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
