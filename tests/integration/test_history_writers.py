"""History writers against the real broker and real stores: commit after store, poison, races.

The writer class runs in this process (its consumer is a real group member); the
last tests run it as Ray actors, started and stopped the way the job does.
"""

from __future__ import annotations

import json
import uuid
from itertools import pairwise

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from ray_backup.actors.history_writer import HistoryWriter
from ray_backup.errors import PublishFailed
from ray_backup.history import open_history
from ray_backup.inventory.schema import init_db
from ray_backup.settings import Settings
from ray_backup.snapshot import Snapshot
from tests.integration.conftest import wait_for
from tests.support.history import at, capture_text, snapshot, variants
from tests.support.services import consume_all

pytestmark = pytest.mark.timeout(180)

SECRET = "secret=hunter2-not-in-events"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    base = capture_text()
    return [t.replace("/ip firewall address-list\n", f"/ip firewall address-list\n# {SECRET}\n", 1)
            for t in variants(base, 4)]


@pytest.fixture(params=["postgres", "directory"])
def history_settings(request, kafka_bootstrap, make_topic, tmp_path):
    """Factory: settings for writers of a fresh topic (and group) into PostgreSQL (a fresh
    database, `db init`ed) or, without DATABASE_URL, the output directory."""
    database = None
    if request.param == "postgres":
        database = request.getfixturevalue("pg_url")
        init_db(database)

    def make(partitions: int = 1, **extra) -> Settings:
        return writer_settings(kafka_bootstrap, make_topic, tmp_path, partitions,
                               database_url=database, **extra)

    return make


def writer_settings(bootstrap, make_topic, tmp_path, partitions=1, **extra) -> Settings:
    return Settings(
        kafka_bootstrap_servers=bootstrap, kafka_topic=make_topic(partitions),
        changes_topic=make_topic(1), history_group=f"rb_test_{uuid.uuid4().hex[:8]}",
        output_dir=str(tmp_path / "out"), **extra,
    )


@pytest.fixture
def writers():
    """Factory: in-process writers, stopped after the test."""
    started: list[HistoryWriter] = []

    def start(settings: Settings, count: int = 1) -> list[HistoryWriter]:
        new = [HistoryWriter(f"history-writer-t{len(started) + n}", settings) for n in range(count)]
        started.extend(new)
        return new

    yield start
    for writer in started:
        writer.stop(15)


def produce(settings: Settings, values: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
    for key, value in values:
        producer.produce(settings.kafka_topic, key=key.encode(), value=value)
    assert producer.flush(10) == 0


def events(snapshots: list[Snapshot]) -> list[tuple[str, bytes]]:
    return [(s.device_id, s.to_json_bytes()) for s in snapshots]


def committed(settings: Settings, partitions: int = 1) -> list[int]:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers,
                         "group.id": settings.history_group})
    try:
        tps = [TopicPartition(settings.kafka_topic, p) for p in range(partitions)]
        return [tp.offset for tp in consumer.committed(tps, timeout=10)]
    finally:
        consumer.close()


def total(writers_: list[HistoryWriter], key: str) -> int:
    return sum(w.stats()[key] for w in writers_)


def handled(writers_: list[HistoryWriter]) -> int:
    return sum(total(writers_, k) for k in ("new", "duplicate", "stale", "rejected", "poison"))


def changes_on(settings: Settings, expected: int | None = None) -> list[dict]:
    messages = consume_all(settings.kafka_bootstrap_servers, settings.changes_topic, expected)
    for m in messages:
        assert SECRET.encode() not in m.value() and b"config_text" not in m.value()
    return [{"key": m.key().decode(), **json.loads(m.value())} for m in messages]


def test_duplicate_delivery_stores_one_version_and_commits(history_settings, writers, texts):
    settings = history_settings()
    a = snapshot(texts[0], at(1))
    produce(settings, events([a, a]))
    (writer,) = writers(settings)
    wait_for(lambda: handled([writer]) == 2, 30, "both deliveries handled")
    assert [v.sha256_hash for v in open_history(settings).versions(a.device_id)] == [a.sha256_hash]
    assert (writer.stats()["new"], writer.stats()["duplicate"]) == (1, 1)
    assert committed(settings) == [2]


def test_late_delivery_is_ignored_and_counted_never_a_reversed_diff(history_settings, writers,
                                                                     texts):
    settings = history_settings()
    older, newer = snapshot(texts[0], at(1)), snapshot(texts[1], at(2))
    produce(settings, events([newer, older]))
    (writer,) = writers(settings)
    wait_for(lambda: handled([writer]) == 2, 30, "both handled")
    assert [v.sha256_hash for v in open_history(settings).versions(newer.device_id)] == [
        newer.sha256_hash]
    assert writer.stats()["stale"] == 1
    assert changes_on(settings) == []
    assert committed(settings) == [2]


def test_a_new_version_publishes_a_change_event_without_config_text(history_settings, writers,
                                                                    texts):
    settings = history_settings()
    snaps = [snapshot(t, at(n)) for n, t in enumerate(texts[:3])]
    produce(settings, events(snaps))
    (writer,) = writers(settings)
    wait_for(lambda: writer.stats()["changes"] == 2, 30, "two change events")
    found = changes_on(settings, expected=2)
    assert [(e["key"], e["old_sha256_hash"], e["new_sha256_hash"]) for e in found] == [
        (s.device_id, old.sha256_hash, s.sha256_hash) for old, s in pairwise(snaps)]
    assert all(e["lines_added"] == 1 and e["sections"] for e in found)


def test_a_version_stored_by_a_writer_that_died_before_announcing_it_is_announced_on_redelivery(
        history_settings, writers, texts):
    settings = history_settings()
    first, second = snapshot(texts[0], at(0)), snapshot(texts[1], at(1))
    # A writer stored both versions and died before publishing the second one's change
    # event and committing its offset: the group delivers that snapshot again.
    store = open_history(settings)
    store.store(first)
    assert store.store(second).change is not None
    unchanged_later = snapshot(texts[1], at(2))  # the next backup: same configuration
    produce(settings, events([second, unchanged_later]))
    (writer,) = writers(settings)
    wait_for(lambda: writer.stats()["duplicate"] == 2, 30, "both seen")
    found = changes_on(settings, expected=1)
    assert [(e["old_sha256_hash"], e["new_sha256_hash"]) for e in found] == [
        (first.sha256_hash, second.sha256_hash)]  # announced once, the unchanged one not at all
    assert found[0]["new_snapshot_id"] == store.versions(second.device_id)[0].snapshot_id
    assert writer.stats()["changes"] == 1 and writer.stats()["new"] == 0
    assert committed(settings) == [2]


def test_poison_messages_are_skipped_and_committed_and_the_writer_lives_on(
        history_settings, writers, texts, caplog):
    settings = history_settings()
    good = snapshot(texts[0], at(1))
    bad_hash = {**good.to_event(), "sha256_hash": "0" * 64}
    produce(settings, [("x", b"\x00not json"), ("y", b'{"device_id": "y"}'),
                       (good.device_id, json.dumps(bad_hash).encode()),
                       *events([good])])
    (writer,) = writers(settings)
    wait_for(lambda: writer.stats()["new"] == 1, 30, "the good snapshot stored")
    assert writer.stats()["poison"] == 3 and writer.stats()["running"]
    assert committed(settings) == [4]
    skipped = [r.getMessage() for r in caplog.records if "skipping message" in r.getMessage()]
    assert len(skipped) == 3 and all(f"{settings.kafka_topic}[0]@" in line for line in skipped)
    assert SECRET not in caplog.text


def test_two_writers_on_two_partitions_store_every_device_once(history_settings, writers, texts):
    settings = history_settings(partitions=2)
    devices = [str(uuid.uuid4()) for _ in range(12)]
    snaps = [snapshot(t, at(n), device=d) for n, t in enumerate(texts[:3]) for d in devices]
    produce(settings, events(snaps + snaps[-6:]))  # the newest of six devices twice
    pair = writers(settings, 2)
    wait_for(lambda: handled(pair) == len(snaps) + 6, 60, "every message handled")
    store = open_history(settings)
    for device in devices:
        assert [v.sha256_hash for v in store.versions(device)] == [
            snapshot(t, "").sha256_hash for t in reversed(texts[:3])]
    assert total(pair, "new") == len(snaps) and total(pair, "duplicate") == 6
    assert sum(committed(settings, 2)) == len(snaps) + 6
    assert all(w.stats()["assigned_partitions"] == 1 for w in pair)


def test_a_database_outage_holds_the_offset_and_loses_or_doubles_nothing(
        own_postgres, kafka_bootstrap, make_topic, tmp_path, writers, texts, caplog):
    init_db(own_postgres.url)
    settings = writer_settings(kafka_bootstrap, make_topic, tmp_path, 1,
                               database_url=own_postgres.url)
    other = str(uuid.uuid4())
    first, second = snapshot(texts[0], at(0)), snapshot(texts[1], at(1))
    produce(settings, events([first]))
    (writer,) = writers(settings)
    wait_for(lambda: writer.stats()["new"] == 1, 30, "the first version stored")
    own_postgres.stop()
    produce(settings, events([second, snapshot(texts[0], at(1), device=other)]))
    wait_for(lambda: writer.stats()["store_failures"] >= 2, 30, "the store failing, retried")
    assert committed(settings) == [1]  # nothing committed past what is stored
    wait_for(lambda: writer.stats()["lag"] == 2, 10, "the lag showing the held messages")
    assert writer.stats()["running"] and writer.stats()["store_failing"]
    own_postgres.start()
    wait_for(lambda: writer.stats()["new"] == 3, 60, "every held message stored once back")
    assert committed(settings) == [3]
    store = open_history(settings)
    assert [v.sha256_hash for v in store.versions(first.device_id)] == [
        second.sha256_hash, first.sha256_hash]
    assert len(store.versions(other)) == 1
    assert writer.stats()["duplicate"] == 0 and writer.stats()["changes"] == 1
    failing = [r for r in caplog.records if "history store failing" in r.getMessage()]
    assert len(failing) == 1  # once per outage, not once per retry


class FlakyChanges:
    """A change sink whose first ``failures`` publications fail (a changes topic outage)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.events: list = []

    def publish_change(self, change) -> None:
        if self.failures:
            self.failures -= 1
            raise PublishFailed(f"device {change.device_id}: change event not published (test)")
        self.events.append(change)

    def close(self) -> None:
        pass


def test_a_change_event_that_fails_is_retried_with_its_message_not_lost(
        history_settings, texts):
    settings = history_settings()
    first, second = snapshot(texts[0], at(0)), snapshot(texts[1], at(1))
    produce(settings, events([first, second]))
    changes = FlakyChanges(failures=2)
    writer = HistoryWriter("history-writer-flaky", settings, changes=changes)
    try:
        wait_for(lambda: writer.stats()["changes"] == 1, 30, "the change event out at last")
        assert [(e.old_sha256_hash, e.new_sha256_hash) for e in changes.events] == [
            (first.sha256_hash, second.sha256_hash)]
        # Stored once; the retries published the kept event instead of storing again.
        assert (writer.stats()["new"], writer.stats()["duplicate"]) == (2, 0)
        wait_for(lambda: committed(settings) == [2], 10, "both offsets committed")
    finally:
        writer.stop(15)
