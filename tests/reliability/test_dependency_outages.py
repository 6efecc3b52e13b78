"""Kafka and Redis stopped (and hung) and restarted in the middle of a run of device loops.

The loops are the production ones (``DeviceLoop.tick`` → ``guarded_backup`` → ``Collector``)
over real SSH to the simulator, with the real ``KafkaSink`` and ``RedisCoordinator``
against private servers (``own_kafka``, ``own_redis``) that the tests stop and start.
Sink- and coordinator-level outage tests are in ``tests/integration/test_kafka_sink.py``
and ``tests/integration/test_redis_coordination.py``; this module checks what the
device loops make of the outages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
import uuid
from collections import defaultdict

import pytest
import redis

from ray_backup import constants as C
from ray_backup import errors
from ray_backup.coordination.base import UnenforcedLock
from ray_backup.coordination.local import LocalCoordinator
from ray_backup.coordination.redis import RedisCoordinator
from ray_backup.drivers.base import sha256_hex
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.loop import DeviceLoop, LoopDeps, Schedule
from ray_backup.settings import Settings
from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml
from ray_backup.sinks.directory import DirectorySink
from ray_backup.sinks.kafka import DELIVERY_MARGIN_S, KafkaSink
from tests.reliability import harness
from tests.support.services import consume_all

DELIVERY_S = 2.0  # the sink's delivery timeout here: short, so outage rounds stay fast
SLACK_S = 2.5


class RecordingSink:
    """Passes snapshots on to the real sink and remembers, per device, what was collected."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.collected: dict[str, list[dict]] = defaultdict(list)

    def publish(self, snapshot) -> None:
        self.collected[snapshot.device_id].append(snapshot.to_event())
        self.inner.publish(snapshot)


@pytest.fixture
def sim_devices(tmp_path):
    """Start ``n`` simulated devices (RouterOS 6 and 7); returns (simulator, Devices)."""
    started = []

    def start(n: int, versions=("7.16", "6.49.10"), config_bytes=None):
        sims = make_fleet(n, seed=uuid.uuid4().int % 10**9, versions=versions,
                          config_bytes=config_bytes)
        simulator = Simulator(sims).start()
        started.append(simulator)
        path = write_inventory_yaml(tmp_path / f"fleet-{len(started)}.yaml", sims)
        return simulator, YamlInventory(path).load().devices

    yield start
    for simulator in started:
        simulator.stop()


def kafka_fleet(own_kafka, tmp_path, devices, *, spool_max_bytes=1 << 30):
    topic = own_kafka.create_topic("config.snapshots", partitions=2)
    settings = Settings(kafka_bootstrap_servers=own_kafka.bootstrap, kafka_topic=topic,
                        spool_dir=str(tmp_path / "spool"), spool_max_bytes=spool_max_bytes)
    sink = KafkaSink(settings, delivery_timeout=DELIVERY_S, drain_interval=0.5)
    recorder = RecordingSink(sink)
    fleet = harness.fleet(devices, harness.collector(recorder), LocalCoordinator())
    return topic, sink, recorder, fleet


def consumed_events(bootstrap, topic, expected):
    messages = consume_all(bootstrap, topic, expected=expected, timeout=20,
                           config={"fetch.max.bytes": 64 << 20})
    events = defaultdict(list)
    for message in messages:
        event = json.loads(message.value())
        assert message.key().decode() == event["device_id"]
        events[event["device_id"]].append(event)
    return events, len(messages)


def without_repeats(events: list[dict]) -> list[dict]:
    """A re-sent event (same device, same hash, same time) is harmless; drop repeats."""
    out: list[dict] = []
    for event in events:
        if not out or out[-1] != event:
            out.append(event)
    return out


def test_kafka_outage_mid_run_loses_nothing_and_delivers_in_order(own_kafka, sim_devices, tmp_path):
    simulator, devices = sim_devices(4)
    topic, sink, recorder, fleet = kafka_fleet(own_kafka, tmp_path, devices)
    statuses = []

    def backup_round():
        for sim in simulator.devices:
            sim.mutate()  # every round is a new configuration: order is visible
        started = time.monotonic()
        done = fleet.round()
        statuses.append({t.result.status for t in done.values()})
        return done, time.monotonic() - started

    try:
        for _ in range(2):
            backup_round()
        before, count = consumed_events(own_kafka.bootstrap, topic, expected=8)
        assert count == 8

        own_kafka.stop()
        for _ in range(2):
            done, took = backup_round()
            kinds = {t.result.error_kind for t in done.values()}
            assert kinds == {errors.PUBLISH_FAILED}, [t.result for t in done.values()]
            assert took < DELIVERY_S + DELIVERY_MARGIN_S + SLACK_S  # bounded, devices in parallel
            assert all("spooled" in t.result.error for t in done.values())
        assert sink.pending() == 8  # kept on disk, nothing dropped
        assert sink.spool.size_bytes() <= sink.spool.max_bytes

        own_kafka.start()  # an empty broker (tansu keeps nothing); the topic is re-created
        done, _ = backup_round()  # each device sends its spooled snapshots first, then this one
        for t in done.values():  # (or, if the drainer has the device just now, queues behind it)
            assert t.result.ok or "spooled behind" in t.result.error, t.result
        deadline = time.monotonic() + 15
        while sink.pending() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sink.pending() == 0
        after, _ = consumed_events(own_kafka.bootstrap, topic, expected=12)
    finally:
        sink.close()

    assert statuses[0] == statuses[1] == {C.STATUS_SUCCESS}
    for device in devices:
        collected = recorder.collected[device.id]
        assert len(collected) == 5
        seen = without_repeats(before[device.id] + after[device.id])
        assert seen == collected, f"device {device.id}: delivered ≠ collected, in order"
        for event in before[device.id] + after[device.id]:
            assert event["sha256_hash"] == sha256_hex(event["config_text"])


def test_kafka_outage_longer_than_the_spool_keeps_the_oldest(own_kafka, sim_devices, tmp_path,
                                                             caplog):
    _, devices = sim_devices(3, versions=("7.16",), config_bytes=20_000)
    # Room for two snapshots of about 20 kB, not three.
    topic, sink, _, fleet = kafka_fleet(own_kafka, tmp_path, devices, spool_max_bytes=50_000)
    first, second, last = (d.id for d in devices)
    try:
        own_kafka.stop()
        with caplog.at_level(logging.ERROR):
            kept = fleet.round([first, second])
            refused = fleet.round([last])[last].result
        assert all("spooled for redelivery" in t.result.error for t in kept.values())
        assert refused.error_kind == errors.PUBLISH_FAILED and "is full" in refused.error
        assert "\n" not in refused.error
        assert sink.pending() == 2 and sink.spool.size_bytes() <= sink.spool.max_bytes
        assert "is full" in caplog.text  # an operator sees it in the log, as an error
        # The refused device failed (not silently): it backs off and is collected again.
        assert fleet.loops[last].state.last_error_kind == errors.PUBLISH_FAILED
        assert fleet.loops[last].state.backoff_until > time.time()

        own_kafka.start()
        assert sink.drain() and sink.pending() == 0
        got, count = consumed_events(own_kafka.bootstrap, topic, expected=2)
        assert count == 2 and set(got) == {first, second}
    finally:
        sink.close()


def redis_state(client, prefix, device_id):
    raw = client.get(f"{prefix}state:{device_id}")
    return None if raw is None else json.loads(raw)


def test_redis_down_or_hung_backups_go_on_and_state_catches_up(own_redis, sim_devices, tmp_path,
                                                               caplog):
    _, devices = sim_devices(4)
    prefix = "rb_rel:"
    coordinator = RedisCoordinator(own_redis.url, prefix)
    fleet = harness.fleet(devices, harness.collector(DirectorySink(tmp_path / "out")), coordinator)
    offline = devices[0].id
    status_key = C.DEVICE_STATUS_KEY.format(device_id=offline)

    def client():
        return redis.Redis.from_url(own_redis.url, decode_responses=True, socket_timeout=5)

    def scheduled_round():
        # As the timer loop would tick, with the online gate; the interval is not waited for.
        done = asyncio.run(_scheduled(fleet))
        return {i: r.status for i, r in done.items()}

    def assert_state_in_redis():
        raw = client()
        try:
            for device in devices:
                assert redis_state(raw, prefix, device.id) == fleet.loops[device.id].state.to_dict()
                assert not raw.exists(C.DEVICE_LOCK_KEY.format(device_id=device.id))
        finally:
            raw.close()

    everyone_ok = {d.id: C.STATUS_SUCCESS for d in devices}
    failures: list[tuple[str, type]] = []  # every Redis call that failed: (what, error type)
    record_failure = coordinator._failed

    def failed(what, exc):
        failures.append((what, type(exc)))
        record_failure(what, exc)

    coordinator._failed = failed
    try:
        # Up: the poller's status key is obeyed.
        c = client()
        c.set(status_key, "offline")
        c.close()
        statuses = scheduled_round()
        assert statuses == {**everyone_ok, offline: C.STATUS_SKIPPED_OFFLINE}
        assert_state_in_redis()

        # Hung (the process is stopped: TCP is accepted, nothing is answered).
        failures.clear()
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            statuses = scheduled_round()
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
        assert statuses == everyone_ok  # unknown status counts as online
        # What bounds the round, counted rather than timed: each device's status read, lock
        # and state write fail once, on a socket timeout, and are neither retried nor repeated.
        assert failures and {kind for _, kind in failures} == {redis.exceptions.TimeoutError}
        assert sorted(what for what, _ in failures) == sorted(
            ["device status", "lock", "save state"] * len(devices))
        assert not coordinator.available

        statuses = scheduled_round()  # Redis answers again: gating and writes resume
        assert statuses == {**everyone_ok, offline: C.STATUS_SKIPPED_OFFLINE}
        assert coordinator.available
        assert_state_in_redis()

        # Down (refused): nothing waits, every device is backed up without a lock.
        own_redis.stop()
        failures.clear()
        mark = len(caplog.records)
        with caplog.at_level(logging.WARNING):
            statuses = scheduled_round()
            assert isinstance(coordinator.acquire_lock("probe", 30), UnenforcedLock)
        assert statuses == everyone_ok
        # Refused at once: every failure is a refused connection, none waited for a timeout.
        assert failures and all(issubclass(kind, redis.exceptions.ConnectionError)
                                and not issubclass(kind, redis.exceptions.TimeoutError)
                                for _, kind in failures), failures
        said = [r for r in caplog.records[mark:] if "Redis unavailable" in r.getMessage()]
        assert len(said) == 1  # once per outage, not once per call

        own_redis.start()  # empty: no persistence
        statuses = scheduled_round()
        assert statuses == everyone_ok  # the offline key went with the old Redis
        assert coordinator.available
        assert_state_in_redis()
        assert "tick failed" not in caplog.text and "Traceback" not in caplog.text
    finally:
        coordinator.close()


async def _scheduled(fleet):
    loops = list(fleet.loops.values())
    results = await asyncio.gather(*(loop.tick(manual=False) for loop in loops))
    return {loop.device.id: result for loop, result in zip(loops, results, strict=True)}


class FlakyPermits(harness.LocalPermits):
    """The semaphore actor is restarting: the first acquire fails."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def acquire(self, holder, lease_s):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("ssh-semaphore is restarting")
        return await super().acquire(holder, lease_s)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    async def wait(self, event, timeout) -> bool:
        await asyncio.sleep(0)
        if event.is_set():
            return True
        self.now += max(timeout, 0)
        return False


def test_semaphore_unavailable_retries_within_a_minute_not_an_interval(sim_devices, tmp_path):
    """An infrastructure error in a tick (the SSH semaphore actor restarting) must not
    cost the device a whole backup interval (6 h by default)."""
    _, devices = sim_devices(1)
    clock = FakeClock()
    reports = []
    deps = LoopDeps(collector=harness.collector(DirectorySink(tmp_path / "out")),
                    coordinator=LocalCoordinator(), permits=FlakyPermits(),
                    schedule=Schedule(interval=21600, jitter_min=0, jitter_max=0, lock_ttl=60,
                                      lease_s=120),
                    report=reports.append, clock=clock)
    loop = DeviceLoop(devices[0], deps)
    start = clock.now

    async def main():
        loop.start()
        deadline = time.monotonic() + 30
        while not reports and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await loop.stop(grace_s=5)

    asyncio.run(main())
    assert reports and reports[0]["status"] == C.STATUS_SUCCESS
    assert reports[0]["last_attempt_at"] - start <= 60, "retried only after a whole interval"


@pytest.mark.soak
def test_soak_repeated_kafka_and_redis_outages(own_kafka, own_redis, sim_devices, tmp_path):
    """RAY_BACKUP_SOAK=1: 16 devices, five cycles of Kafka and Redis going down together
    for two rounds and coming back; nothing collected is lost or reordered, and the state
    in Redis ends equal to the loops' state."""
    simulator, devices = sim_devices(16)
    topic = own_kafka.create_topic("config.snapshots", partitions=4)
    settings = Settings(kafka_bootstrap_servers=own_kafka.bootstrap, kafka_topic=topic,
                        spool_dir=str(tmp_path / "spool"))
    sink = KafkaSink(settings, delivery_timeout=DELIVERY_S, drain_interval=0.5)
    recorder = RecordingSink(sink)
    coordinator = RedisCoordinator(own_redis.url, "soak:")
    fleet = harness.fleet(devices, harness.collector(recorder), coordinator)
    seen: dict[str, list[dict]] = defaultdict(list)
    in_broker = 0  # events the broker holds since its last (empty) start

    def collect_from_broker():
        events, count = consumed_events(own_kafka.bootstrap, topic, expected=in_broker)
        assert count == in_broker
        for device_id, got in events.items():
            seen[device_id].extend(got)

    def backup_round():
        for sim in simulator.devices:
            sim.mutate()
        return fleet.round()

    try:
        for _cycle in range(5):
            for _ in range(2):
                done = backup_round()
                assert all(t.result.ok or "spooled behind" in t.result.error
                           for t in done.values())
            in_broker += 2 * len(devices)
            deadline = time.monotonic() + 60
            while sink.pending() and time.monotonic() < deadline:
                time.sleep(0.2)
            collect_from_broker()
            own_kafka.stop()
            own_redis.stop()
            for _ in range(2):
                done = backup_round()
                assert {t.result.error_kind for t in done.values()} == {errors.PUBLISH_FAILED}
            own_kafka.start()
            own_redis.start()
            deadline = time.monotonic() + 90
            while sink.pending() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert sink.pending() == 0
            in_broker = 2 * len(devices)  # the restarted broker holds the spooled ones only
        collect_from_broker()
        for device in devices:
            assert without_repeats(seen[device.id]) == recorder.collected[device.id]
        assert coordinator.is_online(devices[0].id) and coordinator.available  # flushes state
        check = redis.Redis.from_url(own_redis.url, decode_responses=True)
        for device in devices:
            stored = json.loads(check.get(f"soak:state:{device.id}"))
            assert stored == fleet.loops[device.id].state.to_dict()
        check.close()
    finally:
        sink.close()
        coordinator.close()
