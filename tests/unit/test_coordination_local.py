"""LocalCoordinator: in-process locks with Redis's semantics, state in memory."""

from __future__ import annotations

import threading

from ray_backup.coordination import Coordinator, Lock, open_coordinator
from ray_backup.coordination.base import UnenforcedLock
from ray_backup.coordination.local import LocalCoordinator
from ray_backup.models import DeviceState
from ray_backup.settings import Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_open_coordinator_without_redis_is_local():
    coordinator = open_coordinator(Settings())
    assert isinstance(coordinator, LocalCoordinator)
    assert isinstance(coordinator, Coordinator)


def test_every_device_is_online():
    assert LocalCoordinator().is_online("anything")


def test_lock_is_exclusive_until_released():
    c = LocalCoordinator()
    lock = c.acquire_lock("d", 60)
    assert isinstance(lock, Lock) and lock.held
    assert c.acquire_lock("d", 60) is None
    assert c.acquire_lock("other", 60) is not None
    lock.release()
    lock.release()  # idempotent
    assert c.acquire_lock("d", 60) is not None


def test_lock_as_context_manager():
    c = LocalCoordinator()
    with c.acquire_lock("d", 60):
        assert c.acquire_lock("d", 60) is None
    assert c.acquire_lock("d", 60) is not None


def test_expired_lock_can_be_taken_and_is_not_released_by_its_first_owner():
    clock = FakeClock()
    c = LocalCoordinator(clock=clock)
    first = c.acquire_lock("d", 10)
    clock.now += 11
    second = c.acquire_lock("d", 10)
    assert second is not None
    first.release()  # too late: must not free the second owner's lock
    assert c.acquire_lock("d", 10) is None
    second.release()
    assert c.acquire_lock("d", 10) is not None


def test_renewal_extends_only_our_unexpired_lock():
    clock = FakeClock()
    c = LocalCoordinator(clock=clock)
    first = c.acquire_lock("d", 10)
    clock.now += 8
    assert first.renew()  # good for another 10 s from now
    clock.now += 8
    assert c.acquire_lock("d", 10) is None
    clock.now += 3
    second = c.acquire_lock("d", 10)  # first expired after all
    assert second is not None
    assert not first.renew()  # never extends someone else's lock
    first.release()
    assert c.acquire_lock("d", 10) is None
    assert UnenforcedLock("d").renew()


def test_only_one_of_many_threads_gets_the_lock():
    c = LocalCoordinator()
    got = []
    barrier = threading.Barrier(16)

    def take():
        barrier.wait()
        got.append(c.acquire_lock("d", 60))

    threads = [threading.Thread(target=take) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(lock is not None for lock in got) == 1


def test_state_round_trip_is_a_copy():
    c = LocalCoordinator()
    assert c.load_state("d") is None
    state = DeviceState(last_status="success", consecutive_failures=0, last_hash="ab")
    c.save_state("d", state)
    state.consecutive_failures = 5  # changed after saving: not saved
    loaded = c.load_state("d")
    assert loaded == DeviceState(last_status="success", consecutive_failures=0, last_hash="ab")
    loaded.last_hash = "zz"
    assert c.load_state("d").last_hash == "ab"
    c.delete_state("d")
    assert c.load_state("d") is None
    c.close()


def test_unenforced_lock_is_a_lock_that_holds_nothing():
    lock = UnenforcedLock("d")
    assert isinstance(lock, Lock) and not lock.held
    with lock:
        pass
    assert "d" in repr(lock)
