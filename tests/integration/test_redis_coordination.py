"""RedisCoordinator against a real Redis: gating, locks, state, and Redis going away."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid

import pytest
import redis

from ray_backup import constants as C
from ray_backup.actors.semaphore import SSHSemaphore
from ray_backup.coordination import open_coordinator
from ray_backup.coordination.base import UnenforcedLock
from ray_backup.coordination.leases import RedisLeaseStore
from ray_backup.coordination.redis import RedisCoordinator, RedisLock
from ray_backup.coordination.renewal import LockRenewer
from ray_backup.models import DeviceState
from ray_backup.settings import Settings
from tests.support.services import free_port


@pytest.fixture
def device(redis_url):
    """A fresh device id; its unprefixed keys (status, lock) are deleted after."""
    device_id = f"rb-test-{uuid.uuid4().hex[:12]}"
    yield device_id
    client = redis.Redis.from_url(redis_url)
    client.delete(C.DEVICE_STATUS_KEY.format(device_id=device_id),
                  C.DEVICE_LOCK_KEY.format(device_id=device_id))
    client.close()


@pytest.fixture
def raw(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def coordinators(redis_url, redis_prefix):
    made: list[RedisCoordinator] = []

    def make(url: str = redis_url, **kw) -> RedisCoordinator:
        made.append(RedisCoordinator(url, redis_prefix, **kw))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_open_coordinator_with_redis_url(redis_url, redis_prefix):
    c = open_coordinator(Settings(redis_url=redis_url, redis_prefix=redis_prefix))
    assert isinstance(c, RedisCoordinator) and c.prefix == redis_prefix
    c.close()


def test_online_gating(coordinators, device, raw):
    c = coordinators()
    status_key = f"device:{device}:status"
    assert c.is_online(device)  # no key yet: the first poll has not happened
    raw.set(status_key, "offline")
    assert not c.is_online(device)
    raw.set(status_key, "online")
    assert c.is_online(device)
    raw.set(status_key, "unknown")
    assert not c.is_online(device)


def test_redis_down_counts_as_online_quickly(coordinators, caplog):
    c = coordinators(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    start = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert c.is_online("d1") and c.is_online("d2")
    assert time.monotonic() - start < 2
    assert not c.available
    assert caplog.text.count("Redis unavailable") == 1  # once per outage, not per call


def test_a_hung_redis_costs_a_bounded_time(coordinators):
    # a server that accepts connections and never answers (a hung or black-holed Redis)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        c = coordinators(f"redis://127.0.0.1:{server.getsockname()[1]}/0", socket_timeout=0.3)
        start = time.monotonic()
        assert c.is_online("d1")
        assert isinstance(c.acquire_lock("d1", 30), UnenforcedLock)
        assert time.monotonic() - start < 1.5  # two calls, one socket timeout each


def test_lock_is_exclusive_across_clients(coordinators, device, raw):
    first, second = coordinators(), coordinators()
    lock = first.acquire_lock(device, 30)
    assert isinstance(lock, RedisLock)
    assert second.acquire_lock(device, 30) is None
    assert 0 < raw.pttl(f"backup:device:{device}") <= 30_000
    lock.release()
    with second.acquire_lock(device, 30) as again:
        assert again is not None and first.acquire_lock(device, 30) is None
    assert raw.get(f"backup:device:{device}") is None


def test_release_from_another_thread(coordinators, device, raw):
    c = coordinators()
    lock = c.acquire_lock(device, 30)  # async actors acquire and release in different threads
    worker = threading.Thread(target=lock.release)
    worker.start()
    worker.join()
    assert raw.get(f"backup:device:{device}") is None


def test_release_is_token_safe(coordinators, device, raw, caplog):
    first, second = coordinators(), coordinators()
    stale = first.acquire_lock(device, 0.2)
    time.sleep(0.3)  # the backup outlived its TTL ...
    fresh = second.acquire_lock(device, 30)  # ... and another process took the device
    assert fresh is not None
    token = raw.get(f"backup:device:{device}")
    with caplog.at_level(logging.WARNING):
        stale.release()  # must not delete the new owner's lock
    assert raw.get(f"backup:device:{device}") == token
    assert "expired before release" in caplog.text
    assert first.acquire_lock(device, 30) is None
    fresh.release()
    assert raw.get(f"backup:device:{device}") is None


def test_state_round_trip(coordinators, redis_prefix, raw):
    c = coordinators()
    assert c.load_state("d1") is None
    state = DeviceState(last_attempt_at=1.5, last_status="failed", last_error_kind="timeout",
                        consecutive_failures=2, backoff_until=99.0, last_hash="ab" * 32)
    c.save_state("d1", state)
    assert json.loads(raw.get(f"{redis_prefix}state:d1")) == state.to_dict()
    assert coordinators().load_state("d1") == state  # another process reads it back
    c.delete_state("d1")
    assert c.load_state("d1") is None and raw.get(f"{redis_prefix}state:d1") is None


def test_unreadable_state_starts_fresh(coordinators, redis_prefix, raw):
    raw.set(f"{redis_prefix}state:d1", "{not json")
    assert coordinators().load_state("d1") is None


def test_redis_outage_mid_run(own_redis, redis_prefix, caplog):
    c = RedisCoordinator(own_redis.url, redis_prefix)
    try:
        c.save_state("d1", DeviceState(last_status="success", last_hash="11"))
        with c.acquire_lock("d1", 30) as lock:
            assert isinstance(lock, RedisLock)

        own_redis.stop()
        with caplog.at_level(logging.WARNING):
            start = time.monotonic()
            lock = c.acquire_lock("d1", 30)
            assert lock is not None and isinstance(lock, UnenforcedLock)  # not None: backups go on
            lock.release()
            assert c.is_online("d1")
            assert c.load_state("d1") is None
            c.save_state("d1", DeviceState(last_status="failed", consecutive_failures=1))
            c.save_state("d1", DeviceState(last_status="success", last_hash="22"))  # latest wins
            c.save_state("d2", DeviceState(last_status="success", last_hash="33"))
            c.delete_state("gone")
            assert c.load_state("d1").last_hash == "22"  # read-your-writes while down
            assert time.monotonic() - start < 3
        assert not c.available
        assert caplog.text.count("Redis unavailable") == 1

        own_redis.start()  # an empty Redis (no persistence)
        assert c.is_online("d1")  # the next successful call writes what was kept
        assert c.available
        check = RedisCoordinator(own_redis.url, redis_prefix)
        assert check.load_state("d1") == DeviceState(last_status="success", last_hash="22")
        assert check.load_state("d2").last_hash == "33"
        check.close()
    finally:
        c.close()


# -- issue 9, item 4: the lock outlives its backup; leases outlive the semaphore -----------


def test_a_renewed_lock_outlives_its_ttl_and_stays_exclusive(coordinators, device, raw):
    first, second = coordinators(), coordinators()
    lock = first.acquire_lock(device, 0.6)

    async def long_backup():
        async with LockRenewer(lock, 0.6, asyncio.to_thread):
            await asyncio.sleep(1.5)  # two and a half TTLs
            return second.acquire_lock(device, 30)

    assert asyncio.run(long_backup()) is None
    assert raw.pttl(f"backup:device:{device}") > 0
    lock.release()
    assert raw.get(f"backup:device:{device}") is None


def test_renewal_never_extends_someone_elses_lock(coordinators, device, raw):
    first, second = coordinators(), coordinators()
    stale = first.acquire_lock(device, 0.2)
    time.sleep(0.3)
    fresh = second.acquire_lock(device, 5)
    token = raw.get(f"backup:device:{device}")
    assert stale.renew() is False
    assert raw.get(f"backup:device:{device}") == token and raw.pttl(f"backup:device:{device}") <= 5000
    assert fresh.renew() is True
    fresh.release()


def test_leases_survive_a_re_created_semaphore(redis_url, redis_prefix, raw):
    async def main():
        sem = SSHSemaphore(limit=2, store=RedisLeaseStore(redis_url, redis_prefix))
        a = await sem.acquire("device-a", 60)
        b = await sem.acquire("device-b", 60)
        key = f"{redis_prefix}semaphore:leases"
        assert set(raw.hkeys(key)) == {a, b}
        # Ray restarted it: a new process, empty memory, same Redis
        again = SSHSemaphore(limit=2, store=RedisLeaseStore(redis_url, redis_prefix),
                             restarted=True, quarantine_s=600)
        assert again.stats()["held"] == 2 and again.stats()["holders"] == ["device-a", "device-b"]
        waiter = asyncio.create_task(again.acquire("device-c", 60))
        await asyncio.sleep(0.2)
        assert not waiter.done()  # still two holders: no third permit
        assert await again.release(b, "device-a") is False  # not a's lease
        assert await again.release(b, "device-b") is True
        c = await asyncio.wait_for(waiter, 2)
        await asyncio.sleep(0.1)  # the hash is written from the store's thread
        assert set(raw.hkeys(key)) == {a, c}

    asyncio.run(main())


def test_expired_stored_leases_are_dropped(redis_url, redis_prefix, raw):
    key = f"{redis_prefix}semaphore:leases"
    raw.hset(key, mapping={"old": json.dumps({"holder": "x", "expires_at": time.time() - 1}),
                           "bad": "{not json"})
    sem = SSHSemaphore(limit=1, store=RedisLeaseStore(redis_url, redis_prefix))
    assert sem.stats()["held"] == 0 and raw.hlen(key) == 0
