"""ray_backup_devices_stale and ray_backup_spool_pending, computed without Ray."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from ray_backup import constants as C
from ray_backup.metrics import FleetMetrics, Freshness, fleet_gauges

NOW = 1_000_000.0
INTERVAL = 100.0


def row(device_id, status="success", last_success_at=None):
    return {"device_id": device_id, "status": status, "last_success_at": last_success_at}


def test_stale_counts_devices_without_a_success_for_two_intervals_blocked_ones_included():
    rows = [
        row("fresh", last_success_at=NOW - 150),
        row("late", status="failed", last_success_at=NOW - 250),
        row("blocked", status=C.STATUS_AUTH_BLOCKED, last_success_at=NOW - 300),
        row("new", status=C.STATUS_PENDING),  # seen 150 s ago: not yet two intervals
        row("never", status=C.STATUS_HOSTKEY_BLOCKED),  # seen 250 s ago, never succeeded
    ]
    freshness = Freshness(INTERVAL, {"new": NOW - 150, "never": NOW - 250})
    g = fleet_gauges(rows, None, NOW, freshness)
    assert g.stale == 3  # late, blocked, never


def test_without_freshness_nothing_is_stale_and_the_spool_figure_is_passed_through():
    g = fleet_gauges([row("old", last_success_at=NOW - 10**6)], None, NOW, None, spool_pending=7)
    assert (g.stale, g.spool_pending) == (0, 7)


def test_the_scrape_page_serves_both_gauges():
    metrics = FleetMetrics(
        lambda: [row("a", status=C.STATUS_AUTH_BLOCKED)], dict, export_to_ray=False,
        freshness=lambda: Freshness(0.001, {"a": 0.0}), spool_pending=lambda: 4,
    )
    values = {s.name: s.value for f in text_string_to_metric_families(metrics.text())
              for s in f.samples}
    assert values[C.METRIC_DEVICES_STALE] == 1
    assert values[C.METRIC_SPOOL_PENDING] == 4
