"""Fleet metrics: the reference scheduler's names plus what an operator needs.

One registry, served from the supervisor (``RAY_BACKUP_METRICS_PORT``, ``/metrics``):

    mikrotik_config_backup_total{status}        counter   backups by outcome (reference labels)
    mikrotik_config_backup_duration_seconds     histogram one backup: SSH, normalize, publish
    mikrotik_config_backup_active               gauge     backups holding an SSH permit now
    ray_backup_devices{status}                  gauge     devices by last status
    ray_backup_devices_blocked                  gauge     devices blocked on auth or host key
    ray_backup_devices_stale                    gauge     devices with no success for two intervals
    ray_backup_semaphore_waiters                gauge     backups waiting for an SSH permit
    ray_backup_semaphore_permits_held           gauge     SSH permits held now
    ray_backup_last_success_age_seconds         gauge     age of the oldest last success
    ray_backup_reconcile_duration_seconds       histogram one inventory reconcile
    ray_backup_reconcile_errors_total           counter   failed inventory reads
    ray_backup_config_changes_total             counter   change events published (new versions)
    ray_backup_spool_pending                    gauge     snapshots in the nodes' spools, undelivered
    ray_backup_history_writer_lag               gauge     snapshots the history writers are behind
    ray_backup_history_stale_total              counter   snapshots older than the newest version
    ray_backup_history_duplicates_total         counter   snapshots already in history
    ray_backup_history_poison_total             counter   unreadable snapshot events skipped
    ray_backup_history_rejected_total           counter   snapshots refused (tenant, unknown device)

Counters and histograms are fed by the device actors' status reports; gauges are
computed from the status table and the semaphore's last stats at scrape time.
Where history writer actors run (with Kafka), the history series come from their
``stats()`` at scrape time, and ``config_changes`` counts the change events they
published; without Kafka the backing-up process publishes one change event for
each backup whose hash differs from the device's newest version, which is what
the device rows' ``changed`` says, so the rows count them.

The same series also go to Ray's own metrics system (``ray.util.metrics``), so
they show up wherever the cluster's metrics go (each node's metrics export port,
the dashboard's Grafana). Ray prefixes application metrics with ``ray_``, e.g.
``ray_mikrotik_config_backup_total`` and ``ray_ray_backup_devices``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ray_backup import constants as C
from ray_backup.history.metrics import HistoryCollector, writer_stats, writers_expected

log = logging.getLogger(__name__)

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
# Every status a device row can have; each gets a series (0 when no device has it)
# so that dashboards show flat lines, not gaps.
DEVICE_STATUSES = (
    C.STATUS_PENDING, C.STATUS_SUCCESS, C.STATUS_FAILED, C.STATUS_LOCKED,
    C.STATUS_SKIPPED_OFFLINE, C.STATUS_AUTH_BLOCKED, C.STATUS_HOSTKEY_BLOCKED, C.STATUS_BACKOFF,
)
BLOCKED_STATUSES = frozenset({C.STATUS_AUTH_BLOCKED, C.STATUS_HOSTKEY_BLOCKED})
DURATION_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
RECONCILE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30)
# How often the gauges are copied into Ray's metrics (Ray reports every ~10 s).
RAY_REFRESH_S = 5.0

# Every series name the scrape endpoint serves (histograms add _bucket/_sum/_count).
DOCUMENTED_METRICS = (
    C.METRIC_BACKUP_TOTAL, C.METRIC_BACKUP_DURATION, C.METRIC_BACKUP_ACTIVE,
    C.METRIC_DEVICES, C.METRIC_DEVICES_BLOCKED, C.METRIC_DEVICES_STALE, C.METRIC_SEMAPHORE_WAITERS,
    C.METRIC_SEMAPHORE_HELD, C.METRIC_LAST_SUCCESS_AGE, C.METRIC_RECONCILE_DURATION,
    C.METRIC_RECONCILE_ERRORS, C.METRIC_CONFIG_CHANGES, C.METRIC_SPOOL_PENDING,
    C.METRIC_HISTORY_WRITER_LAG, C.METRIC_HISTORY_STALE, C.METRIC_HISTORY_DUPLICATES,
    C.METRIC_HISTORY_POISON, C.METRIC_HISTORY_REJECTED,
)
# A device is stale when its last success (or, never backed up, its first sight) is
# older than this many backup intervals; blocked devices count too.
STALE_INTERVALS = 2


@dataclasses.dataclass(frozen=True)
class FleetGauges:
    """The gauge values at one moment."""

    devices: dict[str, int]
    blocked: int
    last_success_age: float
    active: int
    waiters: int
    stale: int = 0
    spool_pending: int = 0


@dataclasses.dataclass(frozen=True)
class Freshness:
    """What ``stale`` is measured against: the backup interval, and since when (wall clock)
    each device has been in the fleet (for devices that never succeeded)."""

    interval_s: float
    first_seen: dict[str, float] = dataclasses.field(default_factory=dict)

    def stale(self, row: dict, now: float) -> bool:
        since = row.get("last_success_at") or self.first_seen.get(row["device_id"], now)
        return now - since > STALE_INTERVALS * self.interval_s


def fleet_gauges(
    rows: Iterable[dict], semaphore: dict | None, now: float,
    freshness: Freshness | None = None, spool_pending: int = 0,
) -> FleetGauges:
    """Gauge values from the status table and the semaphore's stats."""
    devices = dict.fromkeys(DEVICE_STATUSES, 0)
    oldest = 0.0
    stale = 0
    for row in rows:
        devices[row["status"]] = devices.get(row["status"], 0) + 1
        if row.get("last_success_at"):
            oldest = max(oldest, now - row["last_success_at"])
        stale += bool(freshness and freshness.stale(row, now))
    semaphore = semaphore or {}
    return FleetGauges(
        devices=devices,
        blocked=sum(devices[s] for s in BLOCKED_STATUSES),
        last_success_age=oldest,
        active=semaphore.get("held", 0),
        waiters=semaphore.get("waiting", 0),
        stale=stale,
        spool_pending=spool_pending,
    )


class FleetMetrics:
    """The fleet's metrics: a Prometheus registry, mirrored into Ray's metrics.

    ``rows`` returns the current status rows, ``semaphore_stats`` the SSH
    semaphore's last ``stats()``, ``freshness`` what staleness is measured against,
    ``spool_pending`` the snapshots waiting in the spools; all are read at scrape (and
    refresh) time. ``export_to_ray``: None mirrors when running inside a Ray worker.
    ``history_stats`` returns the history writers' ``stats()`` (default: asks the
    writer actors when running inside Ray, else none).
    """

    def __init__(
        self,
        rows: Callable[[], Iterable[dict]],
        semaphore_stats: Callable[[], dict],
        export_to_ray: bool | None = None,
        history_stats: Callable[[], list[dict]] | None = None,
        freshness: Callable[[], Freshness | None] = lambda: None,
        spool_pending: Callable[[], int] = lambda: 0,
    ) -> None:
        self._rows = rows
        self._semaphore = semaphore_stats
        self._freshness = freshness
        self._spool_pending = spool_pending
        self.registry = CollectorRegistry()
        ray_metrics = _RayMetrics.create(export_to_ray)
        # First in the registry: a scrape folds the writers' new change events into
        # config_changes before that counter is read.
        in_ray = ray_metrics is not None  # only there are writer actors to ask
        self.history = HistoryCollector(
            history_stats or (writer_stats if in_ray else list), lambda n: self.changes.inc(n),
            writers_expected=in_ray and writers_expected(),
        )
        self.registry.register(self.history)
        self.backups = _Counter(
            C.METRIC_BACKUP_TOTAL, "Config backup attempts by outcome", self.registry, ray_metrics,
            labels=("status",),
        )
        for label in REFERENCE_LABEL.values():
            self.backups.touch(status=label)  # every outcome has a series from the start
        self.duration = _Histogram(
            C.METRIC_BACKUP_DURATION, "Duration of one config backup (SSH, normalize, publish)",
            DURATION_BUCKETS, self.registry, ray_metrics,
        )
        self.changes = _Counter(
            C.METRIC_CONFIG_CHANGES, "Change events published (new versions with a diff)",
            self.registry, ray_metrics,
        )
        self.reconcile_duration = _Histogram(
            C.METRIC_RECONCILE_DURATION, "Duration of one inventory reconcile",
            RECONCILE_BUCKETS, self.registry, ray_metrics,
        )
        self.reconcile_errors = _Counter(
            C.METRIC_RECONCILE_ERRORS, "Failed inventory reconciles", self.registry, ray_metrics,
        )
        self.registry.register(_TableCollector(self.gauges))
        self._ray_gauges = _RayGauges(ray_metrics, self.gauges) if ray_metrics else None

    def observe(self, row: dict) -> None:
        """Count one reported backup (a status row with ``result_status``)."""
        status = row.get("result_status")
        if status is None:
            return
        self.backups.inc(status=REFERENCE_LABEL.get(status, status))
        if status in (C.STATUS_SUCCESS, C.STATUS_FAILED) and row.get("duration_s") is not None:
            self.duration.observe(row["duration_s"])
        if status == C.STATUS_SUCCESS and row.get("changed") and not self.history.writers_seen:
            self.changes.inc()

    def gauges(self) -> FleetGauges:
        return fleet_gauges(list(self._rows()), self._semaphore(), time.time(),
                            self._freshness(), self._spool_pending())

    def text(self) -> str:
        """The scrape page, as the endpoint serves it."""
        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self._ray_gauges is not None:
            self._ray_gauges.stop()


class _TableCollector:
    """Gauges computed from the status table when scraped."""

    def __init__(self, gauges: Callable[[], FleetGauges]):
        self._gauges = gauges

    def describe(self):
        return []

    def collect(self):
        g = self._gauges()
        devices = GaugeMetricFamily(C.METRIC_DEVICES, "Devices by last status", labels=["status"])
        for status, count in sorted(g.devices.items()):
            devices.add_metric([status], count)
        yield devices
        yield GaugeMetricFamily(C.METRIC_DEVICES_BLOCKED, "Devices blocked on auth or host key",
                                value=g.blocked)
        yield GaugeMetricFamily(C.METRIC_DEVICES_STALE,
                                "Devices with no successful backup for two intervals",
                                value=g.stale)
        yield GaugeMetricFamily(C.METRIC_SPOOL_PENDING,
                                "Snapshots waiting in the nodes' spools for delivery",
                                value=g.spool_pending)
        yield GaugeMetricFamily(C.METRIC_LAST_SUCCESS_AGE, "Age of the oldest last successful backup",
                                value=g.last_success_age)
        yield GaugeMetricFamily(C.METRIC_BACKUP_ACTIVE, "Backups holding an SSH permit now",
                                value=g.active)
        yield GaugeMetricFamily(C.METRIC_SEMAPHORE_HELD, "SSH permits held now", value=g.active)
        yield GaugeMetricFamily(C.METRIC_SEMAPHORE_WAITERS, "Backups waiting for an SSH permit",
                                value=g.waiters)


# -- Ray's metrics -----------------------------------------------------------------------


class _RayMetrics:
    """Creates ``ray.util.metrics`` instruments; recording never raises."""

    def __init__(self) -> None:
        from ray.util import metrics

        self.module = metrics
        self._warned = False

    @classmethod
    def create(cls, wanted: bool | None) -> _RayMetrics | None:
        if wanted is False:
            return None
        try:
            import ray

            if wanted is None and not ray.is_initialized():
                return None
            return cls()
        except Exception as exc:  # Ray missing or not usable here: scrape endpoint only
            log.warning("fleet metrics not exported to Ray: %s", exc)
            return None

    def record(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as exc:
            if not self._warned:  # once: a broken exporter must not flood the log
                self._warned = True
                log.warning("recording a metric in Ray failed: %s", exc)


def _base_name(name: str) -> str:
    # prometheus_client and Ray both add _total to counters themselves.
    return name.removesuffix("_total")


class _Counter:
    def __init__(self, name, help_text, registry, ray_metrics, labels=()):
        self._labels = tuple(labels)
        self._prom = Counter(_base_name(name), help_text, list(labels), registry=registry)
        self._ray = ray_metrics
        self._ray_counter = (
            ray_metrics.module.Counter(_base_name(name), help_text, tag_keys=self._labels)
            if ray_metrics else None
        )

    def touch(self, **labels: str) -> None:
        """Create the labelled series at 0."""
        self._prom.labels(**labels)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._prom.labels(**labels) if labels else self._prom).inc(amount)
        if self._ray_counter is not None:
            self._ray.record(lambda: self._ray_counter.inc(amount, tags=labels or None))


class _Histogram:
    def __init__(self, name, help_text, buckets, registry, ray_metrics):
        self._prom = Histogram(name, help_text, buckets=buckets, registry=registry)
        self._ray = ray_metrics
        self._ray_histogram = (
            ray_metrics.module.Histogram(name, help_text, boundaries=list(buckets))
            if ray_metrics else None
        )

    def observe(self, value: float) -> None:
        self._prom.observe(value)
        if self._ray_histogram is not None:
            self._ray.record(lambda: self._ray_histogram.observe(value))


class _RayGauges:
    """Copies the gauge values into Ray gauges every ``RAY_REFRESH_S``, in a thread.

    Ray gauges keep the last value set, and some of ours (the last success age)
    change with time alone, so they are refreshed on a timer rather than on events.
    """

    def __init__(self, ray_metrics: _RayMetrics, gauges: Callable[[], FleetGauges]) -> None:
        m = ray_metrics.module
        self._ray = ray_metrics
        self._gauges = gauges
        self._devices = m.Gauge(C.METRIC_DEVICES, "Devices by last status", tag_keys=("status",))
        self._single = {
            "blocked": m.Gauge(C.METRIC_DEVICES_BLOCKED, "Devices blocked on auth or host key"),
            "stale": m.Gauge(C.METRIC_DEVICES_STALE,
                             "Devices with no successful backup for two intervals"),
            "spool_pending": m.Gauge(C.METRIC_SPOOL_PENDING,
                                     "Snapshots waiting in the nodes' spools for delivery"),
            "last_success_age": m.Gauge(C.METRIC_LAST_SUCCESS_AGE,
                                        "Age of the oldest last successful backup"),
            "active": m.Gauge(C.METRIC_BACKUP_ACTIVE, "Backups holding an SSH permit now"),
            "waiters": m.Gauge(C.METRIC_SEMAPHORE_WAITERS, "Backups waiting for an SSH permit"),
        }
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ray-metrics-gauges", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        g = self._gauges()
        for status, count in g.devices.items():
            self._ray.record(lambda s=status, c=count: self._devices.set(c, tags={"status": s}))
        for field, gauge in self._single.items():
            value = getattr(g, field)
            self._ray.record(lambda gauge=gauge, value=value: gauge.set(value))

    def _run(self) -> None:
        while not self._stop.wait(RAY_REFRESH_S):
            try:
                self.refresh()
            except Exception as exc:  # e.g. the table changed under us: next round
                log.debug("refreshing Ray gauges: %s", exc)

    def stop(self) -> None:
        self._stop.set()
