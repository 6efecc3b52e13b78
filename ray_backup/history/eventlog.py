"""Bring an output directory's ``snapshots.jsonl`` (the event log) into its history.

Directories written before the history existed hold every snapshot there; the
first store opened on them imports it, in order, through the store's own rules
(so repeated snapshots collapse into versions). The byte offset reached is kept
in ``history/.eventlog-offset``, so lines appended later by a directory sink are
picked up by the next open and nothing is imported twice (and if it were, the
store's dedupe would make it harmless).
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

OFFSET_FILE = ".eventlog-offset"


def import_event_log(output: Path, root: Path, store: Callable[[Snapshot], object]) -> int:
    """Store the log's snapshots not yet imported; returns how many lines were read."""
    log = output / HISTORY_FILE
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return 0
    if size <= _offset(root):  # the common case: nothing new, no lock taken
        return 0
    ensure_dir(root)
    fd = os.open(root / ".eventlog.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one importer at a time
        return _import_from(log, root, store)
    finally:
        os.close(fd)


def _import_from(log: Path, root: Path, store: Callable[[Snapshot], object]) -> int:
    offset = _offset(root)
    with open(log, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1  # a line still being written waits for the next open
    count = 0
    for number, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            count += 1
            _import_line(log, offset, number, line, store)
    atomic_replace(root / OFFSET_FILE, str(offset + end).encode())
    if count:
        logger.info("imported %d snapshot(s) from %s into the history", count, log)
    return count


def _import_line(log: Path, offset: int, number: int, line: bytes,
                 store: Callable[[Snapshot], object]) -> None:
    try:
        store(Snapshot.from_event(json.loads(line)))
    except (ValueError, KeyError, TypeError, RayBackupError) as exc:
        # One bad line must not stop the rest of the import; it is named, never shown.
        logger.warning("%s: skipped line %d after byte %d: %s", log, number, offset,
                       type(exc).__name__)


def _offset(root: Path) -> int:
    try:
        return int((root / OFFSET_FILE).read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0
