"""Fleet metrics: the reference scheduler's names plus what an operator needs.

One registry, served from the supervisor: counters and the histogram are fed
by the device actors' status reports; gauges are computed from the status
table and the semaphore's last stats at scrape time.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from ray_backup import constants as C

# Our result statuses as the reference scheduler labels them.
REFERENCE_LABEL = {
    C.STATUS_SUCCESS: "success",
    C.STATUS_FAILED: "error",
    C.STATUS_LOCKED: "skipped",
    C.STATUS_SKIPPED_OFFLINE: "skipped_offline",
    C.STATUS_AUTH_BLOCKED: "skipped_auth_blocked",
    C.STATUS_HOSTKEY_BLOCKED: "skipped_hostkey_blocked",
    C.STATUS_BACKOFF: "skipped_backoff",
}


class FleetMetrics:
    def __init__(
        self,
        rows: Callable[[], Iterable[dict]],
        semaphore_stats: Callable[[], dict],
    ) -> None:
        self.registry = CollectorRegistry()
        self.backups = Counter(
            C.METRIC_BACKUP_TOTAL.removesuffix("_total"), "Config backup attempts by outcome",
            ["status"], registry=self.registry,
        )
        self.duration = Histogram(
            C.METRIC_BACKUP_DURATION, "Duration of one config backup (SSH, normalize, publish)",
            buckets=(0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300), registry=self.registry,
        )
        self.changes = Counter(
            C.METRIC_CONFIG_CHANGES.removesuffix("_total"), "Backups whose configuration changed",
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            C.METRIC_RECONCILE_DURATION, "Duration of one inventory reconcile",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30), registry=self.registry,
        )
        self.reconcile_errors = Counter(
            C.METRIC_RECONCILE_ERRORS.removesuffix("_total"), "Failed inventory reconciles",
            registry=self.registry,
        )
        self.registry.register(_TableCollector(rows, semaphore_stats))

    def observe(self, row: dict) -> None:
        status = row.get("result_status")
        if status is None:
            return
        self.backups.labels(REFERENCE_LABEL.get(status, status)).inc()
        if status in (C.STATUS_SUCCESS, C.STATUS_FAILED) and row.get("duration_s") is not None:
            self.duration.observe(row["duration_s"])
        if status == C.STATUS_SUCCESS and row.get("changed"):
            self.changes.inc()


class _TableCollector:
    """Gauges computed from the status table when scraped."""

    def __init__(self, rows: Callable[[], Iterable[dict]], semaphore_stats: Callable[[], dict]):
        self._rows = rows
        self._semaphore = semaphore_stats

    def describe(self):
        return []

    def collect(self):
        rows = list(self._rows())
        sem = self._semaphore() or {}
        by_status: dict[str, int] = {}
        blocked = 0
        oldest = 0.0
        now = time.time()
        for row in rows:
            by_status[row["status"]] = by_status.get(row["status"], 0) + 1
            if row["status"] in (C.STATUS_AUTH_BLOCKED, C.STATUS_HOSTKEY_BLOCKED):
                blocked += 1
            if row.get("last_success_at"):
                oldest = max(oldest, now - row["last_success_at"])
        devices = GaugeMetricFamily(C.METRIC_DEVICES, "Devices by last status", labels=["status"])
        for status, count in sorted(by_status.items()):
            devices.add_metric([status], count)
        yield devices
        yield GaugeMetricFamily(C.METRIC_DEVICES_BLOCKED, "Devices blocked on auth or host key", value=blocked)
        yield GaugeMetricFamily(
            C.METRIC_LAST_SUCCESS_AGE, "Age of the oldest last successful backup", value=oldest
        )
        yield GaugeMetricFamily(
            C.METRIC_BACKUP_ACTIVE, "Backups holding an SSH permit now", value=sem.get("held", 0)
        )
        yield GaugeMetricFamily(
            C.METRIC_SEMAPHORE_WAITERS, "Backups waiting for an SSH permit", value=sem.get("waiting", 0)
        )
