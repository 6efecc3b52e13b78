"""An on-disk spool of snapshots the broker has not acknowledged yet.

Layout (``DiskSpool(directory, max_bytes)``)::

    <directory>/
      <device>/<ns-time>-<seq>-<device>.json   one snapshot event each, oldest first
      .locks/<device>.lock                      per-device flock, never deleted
      .rejected/<name>.json                     entries the broker refused for good

One sub-directory per *device*, not per process: a Ray actor that restarts
gets a new pid (and a device may be served by any actor process on the node),
so a per-process spool would be orphaned by every restart. Keyed by device,
whoever publishes that device next — or the background drainer of any sink
process on the node — finds its backlog, and the device's flock keeps its
entries going out in order, once, even with many processes sharing the spool.
A device directory is removed once drained, so an idle spool is one listing.

Each entry is written atomically (temporary file, fsync, hard link to its final
name, fsync of the directory): a crash leaves either no entry or a whole one,
and an existing entry is never overwritten. The spool is bounded by
``max_bytes``; when full it refuses new entries (``PublishFailed``, logged as an
error) and never drops old ones. Concurrent writers may overshoot the bound by
at most one entry each.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ray_backup.errors import PublishFailed
from ray_backup.sinks.files import (
    FILE_MODE,
    device_of,
    ensure_dir,
    fsync_dir,
    safe_name,
    write_tmp,
)
from ray_backup.snapshot import Snapshot

logger = logging.getLogger(__name__)

_ENTRY = re.compile(r"^(\d{20})-(\d+)-(.+)\.json$")
_LOCKS = ".locks"
_REJECTED = ".rejected"
_STALE_TMP_S = 3600.0


@dataclass(frozen=True, order=True)
class SpoolEntry:
    """One spooled snapshot; entries sort oldest first."""

    name: str
    path: Path
    size: int


class DiskSpool:
    """Snapshots waiting for the broker, one file each, shared by the node's processes."""

    def __init__(
        self,
        directory: str | os.PathLike,
        max_bytes: int,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.directory = ensure_dir(Path(directory).expanduser())
        self.max_bytes = max_bytes
        self._clock_ns = clock_ns
        ensure_dir(self.directory / _LOCKS)
        self._seq = itertools.count()
        self._last_ns = 0
        self._clock_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DiskSpool({str(self.directory)!r}, max_bytes={self.max_bytes})"

    # -- writing -----------------------------------------------------------

    def append(self, snapshot: Snapshot) -> SpoolEntry:
        """Spool ``snapshot`` behind the device's older entries; PublishFailed when full."""
        data = snapshot.to_json_bytes()
        used = self.size_bytes()
        if used + len(data) > self.max_bytes:
            logger.error(
                "spool %s is full (%d of %d bytes): snapshot of device %s not spooled",
                self.directory, used, self.max_bytes, snapshot.device_id,
            )
            raise PublishFailed(
                f"device {snapshot.device_id}: Kafka spool {self.directory} is full "
                f"({used} of {self.max_bytes} bytes)"
            )
        key = safe_name(snapshot.device_id)
        for _ in range(10):  # retried only if a drainer removes the directory under us
            try:
                return self._write_entry(self.directory / key, key, data)
            except FileNotFoundError:
                continue
        raise PublishFailed(f"device {snapshot.device_id}: cannot create spool entry")

    def _write_entry(self, device_dir: Path, key: str, data: bytes) -> SpoolEntry:
        ensure_dir(device_dir)
        newest = max((e.name for e in self._scan(device_dir)), default="")
        tmp = write_tmp(device_dir, key, data)
        try:
            while True:
                name = f"{self._next_ns(newest):020d}-{next(self._seq):06d}-{key}.json"
                try:
                    os.link(tmp, device_dir / name)  # unlike rename, never replaces
                    break
                except FileExistsError:
                    newest = name
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(device_dir)
        return SpoolEntry(name, device_dir / name, len(data))

    def _next_ns(self, newest_name: str) -> int:
        """A time strictly after this process's last entry and the device's newest one.

        The wall clock may step back (NTP); order must not.
        """
        floor = int(newest_name[:20]) if newest_name else 0
        with self._clock_lock:
            self._last_ns = max(self._clock_ns(), self._last_ns + 1, floor + 1)
            return self._last_ns

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a delivered entry; drop the device directory once it is empty."""
        entry.path.unlink(missing_ok=True)
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(entry.path.parent)
        with contextlib.suppress(OSError):  # not empty, or already gone: both fine
            entry.path.parent.rmdir()

    def reject(self, entry: SpoolEntry, reason: str) -> Path:
        """Move an entry the broker will never take out of the queue, keeping the file."""
        target = ensure_dir(self.directory / _REJECTED) / entry.name
        os.replace(entry.path, target)
        fsync_dir(target.parent)
        self.remove(entry)  # only tidies the now possibly empty device directory
        logger.error("spool entry %s rejected for good (%s); kept in %s", entry.name, reason, target)
        return target

    def keep_rejected(self, snapshot: Snapshot, reason: str) -> Path:
        """Keep a snapshot the broker refused for good, outside the delivery queue."""
        entry = self._write_entry(
            ensure_dir(self.directory / _REJECTED), safe_name(snapshot.device_id),
            snapshot.to_json_bytes(),
        )
        logger.error(
            "snapshot of device %s rejected for good (%s); kept in %s",
            snapshot.device_id, reason, entry.path,
        )
        return entry.path

    # -- reading -----------------------------------------------------------

    def entries(self, device_id: str) -> list[SpoolEntry]:
        """The device's spooled entries, oldest first."""
        return sorted(self._scan(self.directory / safe_name(device_id)))

    def load(self, entry: SpoolEntry) -> Snapshot:
        """The snapshot in an entry; ValueError if the file is not a snapshot event."""
        try:
            return Snapshot.from_event(json.loads(entry.path.read_bytes()))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"spool entry {entry.name} is not a snapshot event: {exc}") from None

    def backlog(self) -> list[str]:
        """Device ids with spooled entries, the one waiting longest first."""
        oldest: list[tuple[str, str]] = []
        for device_dir in self._device_dirs():
            found = self._scan(device_dir)
            if not found:
                continue
            first = min(found)
            device_id = device_of(device_dir.name)
            if device_id is None:  # shortened name: the id is inside the event
                with contextlib.suppress(ValueError, OSError):
                    device_id = self.load(first).device_id
            if device_id is not None:
                oldest.append((first.name, device_id))
        return [device_id for _, device_id in sorted(oldest)]

    def pending(self) -> int:
        """Entries waiting for delivery, all devices, all processes on this spool."""
        return sum(len(self._scan(d)) for d in self._device_dirs())

    def size_bytes(self) -> int:
        """Bytes held: waiting entries plus rejected ones (both count against the bound)."""
        dirs = [*self._device_dirs(), self.directory / _REJECTED]
        return sum(e.size for d in dirs for e in self._scan(d))

    def _device_dirs(self) -> list[Path]:
        try:
            with os.scandir(self.directory) as it:
                return [Path(e.path) for e in it if not e.name.startswith(".") and e.is_dir()]
        except FileNotFoundError:
            return []

    def _scan(self, directory: Path) -> list[SpoolEntry]:
        found = []
        try:
            with os.scandir(directory) as it:
                for item in it:
                    if _ENTRY.match(item.name):
                        with contextlib.suppress(FileNotFoundError):
                            found.append(SpoolEntry(item.name, Path(item.path), item.stat().st_size))
                    elif item.name.startswith(".tmp-"):
                        _remove_if_stale(Path(item.path))
        except (FileNotFoundError, NotADirectoryError):
            pass
        return found

    # -- ordering across processes ------------------------------------------

    @contextlib.contextmanager
    def device_lock(self, device_id: str, timeout: float | None = None) -> Iterator[bool]:
        """Hold the device's spool lock (flock, so it also works across processes).

        Yields False if it could not be taken within ``timeout`` seconds
        (``None`` waits as long as it takes, ``0`` tries once).
        """
        path = self.directory / _LOCKS / f"{safe_name(device_id)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            held = _flock(fd, timeout)
            try:
                yield held
            finally:
                if held:
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _flock(fd: int, timeout: float | None) -> bool:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _remove_if_stale(tmp: Path) -> None:
    """Temporary files left by a writer that crashed between write and link."""
    with contextlib.suppress(OSError):
        if time.time() - tmp.stat().st_mtime > _STALE_TMP_S:
            tmp.unlink()
