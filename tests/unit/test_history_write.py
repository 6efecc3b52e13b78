"""The history write side's pure logic: reading events, the HistorySink, change files, metrics."""

from __future__ import annotations

import json
import stat

import pytest

from ray_backup import constants as C
from ray_backup.drivers.base import sha256_hex
from ray_backup.errors import PublishFailed
from ray_backup.history.changes import CHANGES_FILE, FileChangeSink
from ray_backup.history.events import PoisonMessage, parse_snapshot
from ray_backup.history.writers import writer_count
from ray_backup.metrics import FleetMetrics
from ray_backup.settings import Settings
from ray_backup.sinks.history import HistorySink
from ray_backup.snapshot import Snapshot
from tests.support.memory_history import ListChanges, MemoryStore

SECRET = "secret=hunter2"


def snap(device: str, text: str, at: str = "2025-01-01T00:00:00Z") -> Snapshot:
    text = f"/user add name=admin {SECRET}\n{text}\n"
    return Snapshot(device_id=device, tenant_id="t1", collected_at=at,
                    sha256_hash=sha256_hex(text), config_text=text, normalization_version=1)


class ListSink:
    def __init__(self) -> None:
        self.published: list[Snapshot] = []

    def publish(self, snapshot: Snapshot) -> None:
        self.published.append(snapshot)

    def pending(self) -> int:
        return 0

    def close(self) -> None:
        pass


# -- reading snapshot events ----------------------------------------------------------


def test_a_good_event_is_read():
    s = snap("r1", "/ip address")
    assert parse_snapshot(s.to_json_bytes()) == s


@pytest.mark.parametrize(("value", "reason"), [
    (b"", "empty"),
    (b"\xff\xfe not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"device_id": "r1"}', "missing"),
])
def test_unreadable_events_are_poison(value, reason):
    with pytest.raises(PoisonMessage, match=reason):
        parse_snapshot(value)


def test_a_hash_that_is_not_the_texts_is_poison_and_the_reason_holds_no_config():
    event = snap("r1", "/ip address").to_event()
    event["sha256_hash"] = "0" * 64
    with pytest.raises(PoisonMessage) as raised:
        parse_snapshot(json.dumps(event).encode())
    assert "SHA-256" in str(raised.value) and SECRET not in str(raised.value)
    event["sha256_hash"] = "not-hex"
    with pytest.raises(PoisonMessage, match="64 lowercase hex"):
        parse_snapshot(json.dumps(event).encode())


def test_a_field_of_the_wrong_type_is_poison():
    event = snap("r1", "/ip address").to_event()
    event["device_id"] = 7
    with pytest.raises(PoisonMessage, match="not text: device_id"):
        parse_snapshot(json.dumps(event).encode())
    event = snap("r1", "/ip address").to_event()
    event["normalization_version"] = "one"
    with pytest.raises(PoisonMessage, match="normalization_version"):
        parse_snapshot(json.dumps(event).encode())


# -- the HistorySink ------------------------------------------------------------------


def test_history_sink_publishes_stores_and_announces_changes_in_that_order():
    inner, store, changes = ListSink(), MemoryStore(), ListChanges()
    sink = HistorySink(inner, store, changes)
    a, b = snap("r1", "a", "2025-01-01T00:00:00Z"), snap("r1", "b", "2025-01-01T01:00:00Z")
    for s in (a, a, b):
        sink.publish(s)
    assert inner.published == [a, a, b]
    assert [v.sha256_hash for v in store.versions_by_device["r1"]] == [a.sha256_hash, b.sha256_hash]
    assert [(e.old_sha256_hash, e.new_sha256_hash) for e in changes.events] == [
        (a.sha256_hash, b.sha256_hash)]


def test_history_sink_ignores_a_stale_snapshot():
    inner, store, changes = ListSink(), MemoryStore(), ListChanges()
    sink = HistorySink(inner, store, changes)
    sink.publish(snap("r1", "new", "2025-01-02T00:00:00Z"))
    sink.publish(snap("r1", "old", "2025-01-01T00:00:00Z"))
    assert len(store.versions_by_device["r1"]) == 1 and changes.events == []


def test_a_store_failure_fails_the_backup_without_config_text():
    failure = ConnectionError(f"server closed the connection\nDETAIL: row ({SECRET})")
    sink = HistorySink(ListSink(), MemoryStore(fail=failure), ListChanges())
    with pytest.raises(PublishFailed) as raised:
        sink.publish(snap("r1", "a"))
    message = str(raised.value)
    assert "r1" in message and "server closed the connection" in message
    assert SECRET not in message


def test_history_sink_closes_every_part():
    store = MemoryStore()
    HistorySink(ListSink(), store, ListChanges()).close()
    assert store.closed


# -- changes.jsonl -----------------------------------------------------------------------


def test_change_events_are_appended_owner_only_without_config_text(tmp_path):
    store, sink = MemoryStore(), FileChangeSink(tmp_path / "out")
    history = HistorySink(ListSink(), store, sink)
    for n in range(3):
        history.publish(snap("r1", f"line {n}", f"2025-01-01T0{n}:00:00Z"))
    path = tmp_path / "out" / CHANGES_FILE
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e["device_id"] for e in lines] == ["r1", "r1"]
    assert set(lines[0]) == {"device_id", "tenant_id", "old_snapshot_id", "new_snapshot_id",
                             "old_sha256_hash", "new_sha256_hash", "collected_at",
                             "lines_added", "lines_removed", "sections"}
    assert SECRET not in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# -- who writes --------------------------------------------------------------------------


@pytest.mark.parametrize(("database", "kafka", "writers"), [
    ("postgresql://h/db", "127.0.0.1:9092", 3),
    ("postgresql://h/db", None, 0),
    (None, "127.0.0.1:9092", 1),
    (None, None, 0),
])
def test_writer_count_follows_the_issue_table(database, kafka, writers):
    settings = Settings(database_url=database, kafka_bootstrap_servers=kafka, history_writers=3)
    assert writer_count(settings) == writers


# -- metrics -----------------------------------------------------------------------------


def _sample(metrics: FleetMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def test_without_writers_device_rows_count_changes():
    metrics = FleetMetrics(list, dict, export_to_ray=False)
    metrics.observe({"result_status": C.STATUS_SUCCESS, "changed": True, "duration_s": 1.0})
    assert _sample(metrics, C.METRIC_CONFIG_CHANGES) == 1
    assert _sample(metrics, C.METRIC_HISTORY_WRITER_LAG) == 0


def test_with_writers_their_change_events_are_counted_not_the_rows():
    stats = [{"name": "history-writer-0", "lag": 5, "changes": 2, "stale": 1, "duplicate": 3,
              "poison": 0, "rejected": 2},
             {"name": "history-writer-1", "lag": None, "changes": 1, "stale": 0, "duplicate": 0,
              "poison": 1, "rejected": 1}]
    metrics = FleetMetrics(list, dict, export_to_ray=False, history_stats=lambda: stats)
    assert _sample(metrics, C.METRIC_HISTORY_WRITER_LAG) == 5
    assert _sample(metrics, C.METRIC_CONFIG_CHANGES) == 3
    assert _sample(metrics, C.METRIC_HISTORY_STALE) == 1
    assert _sample(metrics, C.METRIC_HISTORY_DUPLICATES) == 3
    assert _sample(metrics, C.METRIC_HISTORY_POISON) == 1
    assert _sample(metrics, C.METRIC_HISTORY_REJECTED) == 3
    metrics.observe({"result_status": C.STATUS_SUCCESS, "changed": True, "duration_s": 1.0})
    stats[0] = {**stats[0], "changes": 4}
    stats[1] = {**stats[1], "changes": 0}  # restarted: counts from 0 again
    assert _sample(metrics, C.METRIC_CONFIG_CHANGES) == 5
    assert "ray_backup_history_writer_lag 5.0" in metrics.text()
