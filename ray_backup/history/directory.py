"""The history as files, for a single machine without a database.

Layout under ``<output>/history/<device>/`` (``<device>`` as ``sinks/files.safe_name``)::

    index.jsonl            one JSON line per version, oldest first (ids, hash, time,
                           counts, sections): `versions()` reads only this
    versions/<id>.rsc      the version's text, sealed like the database's config_text
    diffs/<id>.diff        the masked diff from the previous version, sealed too
    .lock                  flock'ed while a version is added or pruned

Several processes (writer actors, the directory sink, a CLI) may share a
directory: everything that reads the newest version and appends a new one holds
the device's flock, so duplicates and races never make two versions. Files are
owner-only; text files are replaced atomically, the index only appended to
(whole lines) or atomically rewritten by ``prune``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ray_backup.history.base import HistoryLookupError, SectionChange, Stored, Version
from ray_backup.history.diffing import unified_diff
from ray_backup.history.eventlog import import_event_log
from ray_backup.history.rules import (
    KEEP_NEWEST,
    change_event,
    compare,
    match_ref,
    parse_time,
    verdict,
)
from ray_backup.history.sealing import Sealer
from ray_backup.sinks.files import FILE_MODE, append_line, atomic_replace, ensure_dir, safe_name
from ray_backup.snapshot import Snapshot

logger = logging.getLogger(__name__)

HISTORY_DIR = "history"
INDEX = "index.jsonl"


class DirectoryHistory:
    """``HistoryStore`` over ``<output>/history``; imports an old ``snapshots.jsonl`` on open."""

    def __init__(self, output: str | os.PathLike, sealer: Sealer | None = None,
                 import_log: bool = True, retention_days: float | None = None) -> None:
        self.output = Path(output).expanduser()
        self.root = self.output / HISTORY_DIR
        self.sealer = sealer or Sealer()
        self.retention_days = retention_days
        if import_log:
            import_event_log(self.output, self.root, self.store)

    def __repr__(self) -> str:
        return f"DirectoryHistory({str(self.root)!r}, {self.sealer!r})"

    # ------------------------------------------------------------------ writing

    def store(self, snapshot: Snapshot) -> Stored:
        ensure_dir(self.root)  # owner-only, like every level below it
        folder = ensure_dir(self._folder(snapshot.device_id))
        with _locked(folder):
            entries = _read_index(folder)
            newest = _version(entries[-1]) if entries else None
            outcome = verdict(snapshot, newest)
            stored = Stored(outcome, newest) if outcome else self._add(folder, snapshot, newest)
            # Each backup of a device retires its expired versions (the oldest comes first).
            if self.retention_days and len(entries) >= KEEP_NEWEST \
                    and _expired(entries[0], self.retention_days):
                self._prune_device(folder, _cutoff(self.retention_days))
            return stored

    def _add(self, folder: Path, snapshot: Snapshot, newest: Version | None) -> Stored:
        device, tenant = snapshot.device_id, snapshot.tenant_id
        version = Version(str(uuid.uuid4()), device, tenant, snapshot.sha256_hash,
                          snapshot.collected_at)
        _write(ensure_dir(folder / "versions") / f"{version.snapshot_id}.rsc",
               self.sealer.seal(device, tenant, snapshot.config_text))
        change = None
        if newest is not None:
            old_text = self._read_text(folder, newest)
            found = compare(newest.snapshot_id, old_text, version.snapshot_id, snapshot.config_text)
            _write(ensure_dir(folder / "diffs") / f"{version.snapshot_id}.diff",
                   self.sealer.seal(device, tenant, found.diff.text))
            version = replace(version, lines_added=found.diff.lines_added,
                              lines_removed=found.diff.lines_removed, sections=found.sections)
            change = change_event(newest, version)
        entry = _entry(version, newest.snapshot_id if newest else None)
        append_line(folder / INDEX, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        return Stored("new", version, change)

    def prune(self, retention_days: float) -> int:
        cutoff = _cutoff(retention_days)
        deleted = 0
        for folder in self._folders():
            with _locked(folder):
                deleted += self._prune_device(folder, cutoff)
        return deleted

    def _prune_device(self, folder: Path, cutoff: datetime) -> int:
        entries = _read_index(folder)
        gone = [e for e in entries[:-KEEP_NEWEST] if parse_time(e["collected_at"]) < cutoff]
        if not gone:
            return 0
        gone_ids = {e["snapshot_id"] for e in gone}
        kept = []
        for entry in entries:
            if entry["snapshot_id"] in gone_ids:
                continue
            if entry.get("old_snapshot_id") in gone_ids:  # its diff goes with the old version
                entry = {**entry, "old_snapshot_id": None, "lines_added": None,
                         "lines_removed": None, "sections": []}
                (folder / "diffs" / f"{entry['snapshot_id']}.diff").unlink(missing_ok=True)
            kept.append(entry)
        atomic_replace(folder / INDEX, "".join(json.dumps(e, separators=(",", ":")) + "\n"
                                               for e in kept).encode())
        for snapshot_id in gone_ids:
            (folder / "versions" / f"{snapshot_id}.rsc").unlink(missing_ok=True)
            (folder / "diffs" / f"{snapshot_id}.diff").unlink(missing_ok=True)
        return len(gone_ids)

    # ------------------------------------------------------------------ reading

    def versions(self, device_id: str, limit: int | None = None) -> list[Version]:
        if limit == 1:  # "does it have history", "the newest": the index's last line only
            last = _last_line(self._folder(device_id) / INDEX)
            return [_version(json.loads(last))] if last else []
        entries = _read_index(self._folder(device_id))
        if limit is not None:
            entries = entries[-limit:] if limit > 0 else []
        return [_version(e) for e in reversed(entries)]

    def text(self, device_id: str, snapshot_id: str | None = None) -> str:
        version = self._find(device_id, snapshot_id)
        return self._read_text(self._folder(device_id), version)

    def resolve(self, device_id: str, ref: str) -> str:
        ids = [e["snapshot_id"] for e in self._entries(device_id)]
        return match_ref(device_id, ids, ref)

    def diff(self, device_id: str, old_id: str, new_id: str) -> str:
        entries = self._entries(device_id)
        old, new = _pick(device_id, entries, old_id), _pick(device_id, entries, new_id)
        folder = self._folder(device_id)
        return unified_diff(self._read_text(folder, old), self._read_text(folder, new),
                            old.snapshot_id, new.snapshot_id).text

    def stored_diff(self, device_id: str, snapshot_id: str) -> str | None:
        """The masked diff kept for a version (None for a device's first one)."""
        version = self._find(device_id, snapshot_id)
        path = self._folder(device_id) / "diffs" / f"{version.snapshot_id}.diff"
        if not path.exists():
            return None
        return self.sealer.open(device_id, version.tenant_id, path.read_text())

    def latest(self) -> list[tuple[str, str]]:
        found = []
        for folder in self._folders():
            last = _last_line(folder / INDEX)
            if last:
                entry = json.loads(last)
                found.append((entry["device_id"], entry["snapshot_id"]))
        return sorted(found)

    def devices(self) -> list[str]:
        """Every device with a version."""
        return [device for device, _ in self.latest()]

    def close(self) -> None:
        pass

    # ------------------------------------------------------------------ helpers

    def _folder(self, device_id: str) -> Path:
        return self.root / safe_name(device_id)

    def _folders(self) -> Iterator[Path]:
        if self.root.is_dir():
            yield from sorted(p for p in self.root.iterdir() if (p / INDEX).exists())

    def _entries(self, device_id: str) -> list[dict]:
        entries = _read_index(self._folder(device_id))
        if not entries:
            raise HistoryLookupError(f"device {device_id}: no history in {self.root}")
        return entries

    def _find(self, device_id: str, ref: str | None) -> Version:
        if ref is None:  # the newest: the index's last line, read from the end
            last = _last_line(self._folder(device_id) / INDEX)
            if last is None:
                raise HistoryLookupError(f"device {device_id}: no history in {self.root}")
            return _version(json.loads(last))
        return _pick(device_id, self._entries(device_id), ref)

    def _read_text(self, folder: Path, version: Version) -> str:
        stored = (folder / "versions" / f"{version.snapshot_id}.rsc").read_text()
        return self.sealer.open(version.device_id, version.tenant_id, stored)


def _cutoff(retention_days: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=retention_days)


def _expired(entry: dict, retention_days: float) -> bool:
    return parse_time(entry["collected_at"]) < _cutoff(retention_days)


def _pick(device_id: str, entries: list[dict], ref: str) -> Version:
    wanted = match_ref(device_id, [e["snapshot_id"] for e in entries], ref)
    return next(_version(e) for e in entries if e["snapshot_id"] == wanted)


def _entry(version: Version, old_snapshot_id: str | None) -> dict:
    entry = version.to_json()
    entry["tenant_id"] = version.tenant_id
    entry["old_snapshot_id"] = old_snapshot_id
    entry["sections"] = [
        {"component": s.component, "summary": s.summary, "raw_line": s.raw_line}
        for s in version.sections
    ]
    return entry


def _version(entry: dict) -> Version:
    return Version(
        snapshot_id=entry["snapshot_id"],
        device_id=entry["device_id"],
        tenant_id=entry.get("tenant_id"),
        sha256_hash=entry["sha256_hash"],
        collected_at=entry["collected_at"],
        lines_added=entry.get("lines_added"),
        lines_removed=entry.get("lines_removed"),
        sections=tuple(SectionChange.from_json(s) for s in entry.get("sections") or ()),
    )


def _read_index(folder: Path) -> list[dict]:
    try:
        raw = (folder / INDEX).read_bytes()
    except FileNotFoundError:
        return []
    # Only whole lines count: a line is written in one append, but a reader may race it.
    # One JSON array for the lot: a thousand versions decode in one C call.
    whole = [line for line in raw.split(b"\n") if line.endswith(b"}")]
    return json.loads(b"[" + b",".join(whole) + b"]")


def _last_line(path: Path, chunk: int = 8192) -> bytes | None:
    """The last complete line of a file, reading from its end (large indexes stay cheap)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            data = b""
            while size > 0:
                step = min(chunk, size)
                size -= step
                f.seek(size)
                data = f.read(step) + data
                lines = [line for line in data.split(b"\n") if line.endswith(b"}")]
                if len(lines) > 1 or (lines and size == 0):
                    return lines[-1]
            return None
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one writer per device, across processes and threads
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write(path: Path, text: str) -> None:
    atomic_replace(path, text.encode())
