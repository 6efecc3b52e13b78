"""History written by the backing-up process itself: the setups without Kafka.

``HistorySink`` wraps the sink that publishes the snapshot. ``publish`` returns
only once the snapshot is published *and* in the history store *and* its change
event (if any) is out, so a backup succeeds only once history has it. A store or
change-event failure fails the backup (``PublishFailed``); the next backup stores
the device's version then (the store is idempotent: a snapshot already stored is
a duplicate, not a second version).
"""

from __future__ import annotations

import logging

from ray_backup.errors import PublishFailed
from ray_backup.history.base import ChangeSink, HistoryStore
from ray_backup.history.events import failure_line
from ray_backup.sinks.base import Sink
from ray_backup.snapshot import Snapshot

log = logging.getLogger(__name__)


class HistorySink:
    """``inner.publish`` → ``store.store`` → ``changes.publish_change``; thread-safe if they are."""

    def __init__(self, inner: Sink, store: HistoryStore, changes: ChangeSink) -> None:
        self.inner = inner
        self.store = store
        self.changes = changes

    def __repr__(self) -> str:
        return f"HistorySink({self.inner!r}, {type(self.store).__name__}, {self.changes!r})"

    def publish(self, snapshot: Snapshot) -> None:
        self.inner.publish(snapshot)
        try:
            stored = self._store(snapshot)
        finally:
            # A device backs up every few hours and there may be one process per device: hold
            # no idle database connection in between (PostgresHistory reconnects on next use).
            self.store.close()
        if stored.outcome == "stale":
            log.info("device %s: snapshot %s is older than the newest version in history; "
                     "not stored", snapshot.device_id, snapshot.sha256_hash[:12])
        if stored.change is not None:
            self.changes.publish_change(stored.change)

    def _store(self, snapshot: Snapshot):
        try:
            return self.store.store(snapshot)
        except PublishFailed:
            raise
        except Exception as exc:  # e.g. the database is down
            raise PublishFailed(f"device {snapshot.device_id}: snapshot published but not stored "
                                f"in history: {failure_line(exc)}") from exc

    def pending(self) -> int:
        return self.inner.pending()

    def close(self) -> None:
        for part in (self.inner, self.store, self.changes):
            try:
                part.close()
            except Exception as exc:
                log.warning("closing %s: %s", type(part).__name__, exc)

