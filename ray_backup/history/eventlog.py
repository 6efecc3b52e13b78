"""Bring an old output directory's ``snapshots.jsonl`` (the event log) into its history, once.

Directories written before the history existed hold every snapshot there and no
history; the first store opened on them imports the log, in order, through the
store's own rules (so repeated snapshots collapse into versions), then writes
``history/.eventlog-imported`` with the byte offset reached. After that the log is
not read again: the directory sink keeps appending to it, but the same snapshots
reach the history through the history sink or the writer. An import cut short
(a crash) is simply redone: the store makes repeated snapshots duplicates. A
directory the caller may not write (a view of someone else's backups) is read as
it is, without the import.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ray_backup.errors import RayBackupError
from ray_backup.sinks.directory import HISTORY_FILE
from ray_backup.sinks.files import FILE_MODE, atomic_replace, ensure_dir
from ray_backup.snapshot import Snapshot

logger = logging.getLogger(__name__)

MARKER = ".eventlog-imported"


def import_event_log(output: Path, root: Path, store: Callable[[Snapshot], object]) -> int:
    """Store the log's snapshots unless done before; returns how many lines were read."""
    log = output / HISTORY_FILE
    if (root / MARKER).exists() or not log.exists():  # the common case: no lock, no read
        return 0
    try:
        ensure_dir(root)
        fd = os.open(root / ".eventlog.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    except OSError as exc:
        logger.warning("%s: not imported into the history (%s)", log, exc.strerror or exc)
        return 0
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one importer at a time; the next finds the marker
        if (root / MARKER).exists():
            return 0
        return _import(log, root, store)
    finally:
        os.close(fd)


def _import(log: Path, root: Path, store: Callable[[Snapshot], object]) -> int:
    data = log.read_bytes()
    end = data.rfind(b"\n") + 1  # a line still being written is left to the history sink
    count = 0
    for number, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            count += 1
            _import_line(log, number, line, store)
    atomic_replace(root / MARKER, str(end).encode())
    logger.info("imported %d snapshot(s) from %s into the history", count, log)
    return count


def _import_line(log: Path, number: int, line: bytes, store: Callable[[Snapshot], object]) -> None:
    try:
        store(Snapshot.from_event(json.loads(line)))
    except (ValueError, KeyError, TypeError, RayBackupError) as exc:
        # One bad line must not stop the rest of the import; it is named, never shown.
        logger.warning("%s: skipped line %d: %s", log, number, type(exc).__name__)
