"""KafkaSink against a real Kafka-protocol broker (tansu): delivery, outage, spool, order."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict

import pytest

from ray_backup.errors import PublishFailed
from ray_backup.settings import Settings
from ray_backup.sinks import Sink
from ray_backup.sinks.kafka import DELIVERY_MARGIN_S, KafkaSink, Rejected
from ray_backup.sinks.spool import DiskSpool
from ray_backup.snapshot import Snapshot
from tests.support.services import consume_all, free_port

CONTRACT_FIELDS = {"device_id", "tenant_id", "routeros_version", "collected_at", "sha256_hash",
                   "config_text", "normalization_version"}
SECRET = "password=hunter2"
TIMEOUT = 2.0  # delivery timeout for the outage tests: short, so they stay fast


def snap(device: str, n: int, *, size: int = 0, version: str | None = "7.16") -> Snapshot:
    text = f"# {device} #{n}\n/user add name=admin {SECRET}\n" + "/ip address\n" * size
    return Snapshot(device_id=device, tenant_id="tenant-1", collected_at=f"2025-01-01T00:00:{n:02d}Z",
                    sha256_hash=f"{n:064x}", config_text=text, normalization_version=1,
                    routeros_version=version)


def events(messages) -> list[tuple[str, dict]]:
    return [(m.key().decode(), json.loads(m.value())) for m in messages]


def by_device(pairs) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for key, event in pairs:
        assert key == event["device_id"]
        out[key].append(event["sha256_hash"])
    return dict(out)


@pytest.fixture
def make_sink(tmp_path):
    sinks: list[KafkaSink] = []

    def make(bootstrap: str, topic: str, *, spool_dir=None, timeout=TIMEOUT, **kw) -> KafkaSink:
        settings = Settings(kafka_bootstrap_servers=bootstrap, kafka_topic=topic,
                            spool_dir=str(spool_dir or tmp_path / "spool"))
        sink = KafkaSink(settings, delivery_timeout=timeout, **kw)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def test_event_has_exactly_the_contract_fields_and_device_key(kafka_bootstrap, kafka_topic, make_sink):
    sink = make_sink(kafka_bootstrap, kafka_topic)
    with_version, without = snap("dev-a", 1), snap("dev-b", 2, version=None)
    sink.publish(with_version)
    sink.publish(without)

    got = events(consume_all(kafka_bootstrap, kafka_topic, expected=2))
    assert isinstance(sink, Sink)
    assert got == [("dev-a", with_version.to_event()), ("dev-b", without.to_event())]
    assert set(got[0][1]) == CONTRACT_FIELDS
    assert set(got[1][1]) == CONTRACT_FIELDS - {"routeros_version"}
    assert sink.pending() == 0


def test_a_multi_megabyte_config_is_delivered(kafka_bootstrap, kafka_topic, make_sink):
    sink = make_sink(kafka_bootstrap, kafka_topic, timeout=10)
    big = snap("dev-big", 1, size=400_000)  # about 4.8 MB of config text
    assert len(big.config_text) > 4_000_000
    sink.publish(big)
    [message] = consume_all(kafka_bootstrap, kafka_topic, expected=1,
                            config={"fetch.max.bytes": 64 * 2**20, "max.partition.fetch.bytes": 64 * 2**20})
    assert json.loads(message.value())["config_text"] == big.config_text


def test_too_large_for_the_producer_is_rejected_and_kept(kafka_bootstrap, kafka_topic, make_sink, tmp_path):
    sink = make_sink(kafka_bootstrap, kafka_topic)
    huge = snap("dev-huge", 1, size=3_000_000)  # 36 MB, past message.max.bytes
    with pytest.raises(Rejected, match="dev-huge"):
        sink.publish(huge)
    assert sink.pending() == 0  # not retried forever
    kept = list((tmp_path / "spool" / ".rejected").iterdir())
    assert [json.loads(p.read_bytes())["sha256_hash"] for p in kept] == [huge.sha256_hash]
    sink.publish(snap("dev-huge", 2))  # the device is not stuck behind it


def test_many_threads_share_one_sink_and_keep_per_device_order(kafka_bootstrap, make_topic, make_sink):
    topic = make_topic(partitions=4)
    sink = make_sink(kafka_bootstrap, topic)
    devices, per_device = 8, 5

    def backup(device: str) -> None:
        for n in range(per_device):
            sink.publish(snap(device, n))

    threads = [threading.Thread(target=backup, args=(f"dev-{d}",)) for d in range(devices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    got = by_device(events(consume_all(kafka_bootstrap, topic, expected=devices * per_device)))
    assert got == {f"dev-{d}": [f"{n:064x}" for n in range(per_device)] for d in range(devices)}


def test_broker_outage_spools_then_delivers_everything_in_order(own_kafka, make_sink, caplog):
    topic = own_kafka.create_topic("snapshots", partitions=2)
    # the drainer runs only when a delivery succeeds (it wakes on success), not on a timer
    sink = make_sink(own_kafka.bootstrap, topic, drain_interval=3600)
    sink.publish(snap("dev-1", 0))
    before = events(consume_all(own_kafka.bootstrap, topic, expected=1))

    own_kafka.stop()
    for device, n in [("dev-1", 1), ("dev-2", 0)]:
        start = time.monotonic()
        with pytest.raises(PublishFailed, match=f"{device}: not acknowledged"):
            sink.publish(snap(device, n))
        assert time.monotonic() - start < TIMEOUT + DELIVERY_MARGIN_S
    assert sink.pending() == 2
    assert [sink.spool.load(e).sha256_hash for e in sink.spool.entries("dev-1")] == [f"{1:064x}"]

    own_kafka.start()  # an empty broker: tansu keeps nothing, the fixture re-creates the topic
    sink.publish(snap("dev-1", 2))  # delivers dev-1's spooled #1 first, then #2
    assert sink.spool.entries("dev-1") == []
    deadline = time.monotonic() + 10
    while sink.pending() and time.monotonic() < deadline:  # dev-2: the background drainer
        time.sleep(0.05)
    assert sink.pending() == 0

    after = events(consume_all(own_kafka.bootstrap, topic, expected=3))
    assert by_device(before + after) == {
        "dev-1": [f"{n:064x}" for n in range(3)],
        "dev-2": [f"{0:064x}"],
    }
    assert SECRET not in caplog.text


def test_new_snapshot_waits_behind_its_devices_spool(own_kafka, make_sink):
    topic = own_kafka.create_topic("ordered")
    sink = make_sink(own_kafka.bootstrap, topic, drain_interval=3600)  # no background help
    own_kafka.stop()
    with pytest.raises(PublishFailed):
        sink.publish(snap("dev-1", 0))
    own_kafka.start()
    sink.publish(snap("dev-1", 1))
    assert by_device(events(consume_all(own_kafka.bootstrap, topic, expected=2))) == {
        "dev-1": [f"{0:064x}", f"{1:064x}"]}


def test_another_process_spool_is_drained_by_whoever_sends_that_device_next(
        kafka_bootstrap, kafka_topic, make_sink, tmp_path):
    spool_dir = tmp_path / "shared-spool"
    nowhere = f"127.0.0.1:{free_port()}"  # an actor on a node that lost its broker
    dead = make_sink(nowhere, kafka_topic, spool_dir=spool_dir, timeout=1, drain_interval=3600)
    with pytest.raises(PublishFailed):
        dead.publish(snap("dev-1", 0))
    with pytest.raises(PublishFailed):
        dead.publish(snap("dev-2", 0))
    dead.close()
    assert DiskSpool(spool_dir, 10**9).pending() == 2

    # a restarted actor (new process, same node): publishing dev-1 drains dev-1 first,
    # its background drainer delivers dev-2
    alive = make_sink(kafka_bootstrap, kafka_topic, spool_dir=spool_dir, drain_interval=0.2)
    alive.publish(snap("dev-1", 1))
    got = by_device(events(consume_all(kafka_bootstrap, kafka_topic, expected=3)))
    assert got == {"dev-1": [f"{0:064x}", f"{1:064x}"], "dev-2": [f"{0:064x}"]}
    assert alive.pending() == 0


def test_refused_snapshot_behind_a_backlog_is_rejected_after_the_backlog(
        kafka_bootstrap, kafka_topic, make_sink, tmp_path):
    sink = make_sink(kafka_bootstrap, kafka_topic, drain_interval=3600)
    sink.spool.append(snap("dev-1", 0))  # left by an earlier outage
    with pytest.raises(Rejected, match="dev-1"):
        sink.publish(snap("dev-1", 1, size=3_000_000))
    assert sink.pending() == 0
    got = by_device(events(consume_all(kafka_bootstrap, kafka_topic, expected=1)))
    assert got == {"dev-1": [f"{0:064x}"]}


def test_corrupt_spool_entry_is_set_aside_not_blocking(kafka_bootstrap, kafka_topic, make_sink):
    sink = make_sink(kafka_bootstrap, kafka_topic, drain_interval=3600)
    broken = sink.spool.append(snap("dev-1", 0))
    broken.path.write_bytes(b'{"device_id": "dev-1", "config_te')  # e.g. a disk error
    sink.publish(snap("dev-1", 1))
    assert sink.pending() == 0
    assert (sink.spool.directory / ".rejected" / broken.name).exists()
    got = by_device(events(consume_all(kafka_bootstrap, kafka_topic, expected=1)))
    assert got == {"dev-1": [f"{1:064x}"]}


def test_drain_reports_a_backlog_another_deliverer_still_holds(kafka_bootstrap, kafka_topic,
                                                                make_sink):
    sink = make_sink(kafka_bootstrap, kafka_topic)
    sink.spool.append(snap("dev-held", 1))
    with sink.spool.device_lock("dev-held", timeout=0) as held:  # as the drainer holds it
        assert held
        assert sink.drain(wait_s=0.2) is False  # still waiting: not "everything delivered"
    assert sink.drain() is True and sink.pending() == 0
