"""The history writers' series on the supervisor's scrape endpoint (see ``ray_backup.metrics``).

    ray_backup_history_writer_lag          gauge    snapshots the writers are behind the topic
    ray_backup_history_stale_total         counter  snapshots older than the newest version
    ray_backup_history_duplicates_total    counter  snapshots already in history
    ray_backup_history_poison_total        counter  unreadable snapshot events skipped
    ray_backup_history_rejected_total      counter  snapshots the store refused for good (the
                                                    event's tenant is not the device's, or the
                                                    device is unknown to a database requiring it)

Summed over the writer actors, asked at scrape time; their change events feed
``ray_backup_config_changes_total``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ray_backup import constants as C


class HistoryCollector:
    """The history writers' series, from their ``stats()`` at scrape time.

    Their change events go into ``config_changes`` (``count_changes``) as the
    growth of each writer's count since the last scrape (a restarted writer counts
    from 0 again). Where writers run (``writers_expected``, or once one was seen),
    device rows no longer count changes: the writers publish the change events."""

    def __init__(self, stats: Callable[[], list[dict]], count_changes: Callable[[int], None],
                 writers_expected: bool = False):
        self._stats = stats
        self._count_changes = count_changes
        self._changes_seen: dict[str, int] = {}
        self.writers_seen = writers_expected
        self._lock = threading.Lock()

    def describe(self):
        return []

    def collect(self):
        writers = self._stats()
        # Served without writers too (lag 0): dashboards show flat lines, not gaps.
        self.writers_seen = self.writers_seen or bool(writers)
        self._fold_changes(writers)
        lags = [w["lag"] for w in writers if w.get("lag") is not None]
        yield GaugeMetricFamily(C.METRIC_HISTORY_WRITER_LAG,
                                "Snapshots the history writers are behind the topic's end",
                                value=sum(lags))
        for name, key, help_text in (
            (C.METRIC_HISTORY_STALE, "stale", "Snapshots older than the device's newest version"),
            (C.METRIC_HISTORY_DUPLICATES, "duplicate", "Snapshots already in history"),
            (C.METRIC_HISTORY_POISON, "poison", "Unreadable snapshot events skipped"),
            (C.METRIC_HISTORY_REJECTED, "rejected",
             "Snapshots the history store refused for good (tenant mismatch, unknown device)"),
        ):
            yield CounterMetricFamily(name.removesuffix("_total"), help_text,
                                      value=sum(w.get(key, 0) for w in writers))

    def _fold_changes(self, writers: list[dict]) -> None:
        with self._lock:
            for writer in writers:
                now, before = writer.get("changes", 0), self._changes_seen.get(writer["name"], 0)
                self._changes_seen[writer["name"]] = now
                grown = now - before if now >= before else now  # restarted: counts from 0
                if grown:
                    self._count_changes(grown)


def writers_expected() -> bool:
    """Whether this job's settings start history writers (then they count change events)."""
    from ray_backup.history.writers import writer_count
    from ray_backup.settings import Settings

    try:
        return writer_count(Settings.load()) > 0
    except Exception:  # bad settings are reported elsewhere; count from the rows meanwhile
        return False


def writer_stats() -> list[dict]:
    """Every running writer actor's ``stats()`` (inside Ray)."""
    from ray_backup.history import writers

    return writers.stats()
