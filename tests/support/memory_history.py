"""A small in-memory HistoryStore for unit tests of the write side (pure logic only)."""

from __future__ import annotations

import threading
import uuid

from ray_backup.history.base import ChangeEvent, Stored, Version
from ray_backup.snapshot import Snapshot


class MemoryStore:
    """Dedupe by newest hash, stale by collected_at; a change event for each later version."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.versions_by_device: dict[str, list[Version]] = {}
        self.fail = fail
        self.closed = False
        self._lock = threading.Lock()

    def store(self, snapshot: Snapshot) -> Stored:
        if self.fail is not None:
            raise self.fail
        with self._lock:
            versions = self.versions_by_device.setdefault(snapshot.device_id, [])
            newest = versions[-1] if versions else None
            if newest and newest.sha256_hash == snapshot.sha256_hash:
                return Stored("duplicate", newest)
            if newest and snapshot.collected_at < newest.collected_at:
                return Stored("stale")
            version = Version(str(uuid.uuid4()), snapshot.device_id, snapshot.tenant_id,
                              snapshot.sha256_hash, snapshot.collected_at)
            versions.append(version)
        change = None
        if newest:
            change = ChangeEvent(snapshot.device_id, snapshot.tenant_id, newest.snapshot_id,
                                 version.snapshot_id, newest.sha256_hash, version.sha256_hash,
                                 version.collected_at, 1, 1)
        return Stored("new", version, change)

    def close(self) -> None:
        self.closed = True


class ListChanges:
    """A ChangeSink that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[ChangeEvent] = []

    def publish_change(self, change: ChangeEvent) -> None:
        self.events.append(change)

    def close(self) -> None:
        pass
