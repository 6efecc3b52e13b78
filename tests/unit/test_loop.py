"""DeviceLoop on a fake clock with fake collaborators: the tick's gating and the schedule."""

import asyncio
import itertools
import threading
import time

import pytest

from ray_backup import constants as C
from ray_backup import errors
from ray_backup.loop import DeviceLoop, LoopDeps, Schedule
from ray_backup.models import BackupResult, CredentialRef, Device

DEVICE = Device(
    id="7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51", host="127.0.0.1", port=2201,
    credentials=CredentialRef(inventory_file="/x.yaml", username="admin", digest="d1"),
)
SCHEDULE = Schedule(interval=3600, jitter_min=30, jitter_max=300, lock_ttl=90, lease_s=200)


class FakeClock:
    def __init__(self, now=1_000_000.0):
        self.now = now

    def time(self):
        return self.now

    async def wait(self, event, timeout):
        # Jump straight to the deadline unless something already woke us.
        await asyncio.sleep(0)
        if event.is_set():
            return True
        self.now += max(timeout, 0)
        return False


class FakeCoordinator:
    def __init__(self, online=True, locked=False):
        self.online, self.locked = online, locked
        self.saved, self.locks_held = {}, 0

    def is_online(self, device_id):
        return self.online

    def acquire_lock(self, device_id, ttl_s):
        if self.locked:
            return None
        self.locks_held += 1
        coordinator = self

        class Lock:
            def release(self):
                coordinator.locks_held -= 1

        return Lock()

    def save_state(self, device_id, state):
        self.saved[device_id] = state.to_dict()


class FakePermits:
    def __init__(self):
        self.held = 0

    async def acquire(self, holder, lease_s):
        self.held += 1
        return 1

    async def release(self, lease, holder):
        self.held -= 1


class ScriptedCollector:
    """Returns the scripted results in order."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0

    def fetch(self, device):
        self.calls += 1
        kind = self.results.pop(0)
        if kind == "ok":
            return ("snapshot", self.calls), device
        return BackupResult(device.id, C.STATUS_FAILED, error_kind=kind, error=kind), device

    def deliver(self, fetched):
        return BackupResult(DEVICE.id, C.STATUS_SUCCESS, sha256_hash=f"{fetched[1]:064x}")


def make_loop(collector, coordinator=None, permits=None, clock=None):
    reports = []
    deps = LoopDeps(
        collector=collector, coordinator=coordinator or FakeCoordinator(),
        permits=permits or FakePermits(), schedule=SCHEDULE, report=reports.append,
        clock=clock or FakeClock(),
    )
    return DeviceLoop(DEVICE, deps), reports


def run(coro):
    return asyncio.run(coro)


async def run_until_calls(loop, collector, calls):
    """The timer loop on the fake clock until the collector was called ``calls`` times."""
    loop.start()
    while collector.calls < calls:
        await asyncio.sleep(0)
    await loop.stop(grace_s=1)


def test_offline_device_is_skipped_without_ssh():
    collector = ScriptedCollector()
    loop, reports = make_loop(collector, FakeCoordinator(online=False))
    result = run(loop.tick())
    assert result.status == C.STATUS_SKIPPED_OFFLINE and collector.calls == 0
    assert reports[-1]["status"] == C.STATUS_SKIPPED_OFFLINE


def test_locked_device_is_skipped_and_permit_returned():
    permits = FakePermits()
    loop, _ = make_loop(ScriptedCollector(), FakeCoordinator(locked=True), permits)
    assert run(loop.tick()).status == C.STATUS_LOCKED
    assert permits.held == 0


def test_failure_retries_at_backoff_end_and_success_resumes_interval():
    clock = FakeClock()
    coordinator = FakeCoordinator()
    loop, _ = make_loop(ScriptedCollector(errors.TIMEOUT, "ok"), coordinator, clock=clock)
    start = clock.now
    run(loop.tick())
    assert loop.state.next_due == start + 300  # 5 min backoff, not the 1 h interval
    assert coordinator.locks_held == 0
    clock.now = loop.state.next_due
    assert run(loop.tick()).ok
    assert loop.state.next_due == clock.now + SCHEDULE.interval
    assert coordinator.saved[DEVICE.id]["consecutive_failures"] == 0


def test_auth_failure_blocks_scheduled_ticks_but_not_manual_trigger():
    collector = ScriptedCollector(errors.AUTH_FAILED, "ok")
    loop, _ = make_loop(collector)
    run(loop.tick())
    assert run(loop.tick()).status == C.STATUS_AUTH_BLOCKED
    assert collector.calls == 1
    assert run(loop.tick(manual=True)).ok  # an operator's trigger goes through
    assert loop.state.last_error_kind == ""


def test_changed_credentials_unblock_and_wake_the_loop():
    loop, _ = make_loop(ScriptedCollector(errors.AUTH_FAILED))
    run(loop.tick())
    changed = Device(**{**DEVICE.__dict__, "credentials": CredentialRef(digest="d2")})
    loop.update(changed)
    assert loop.state.last_status == C.STATUS_PENDING
    assert loop.state.next_due <= loop.deps.clock.time()


def test_timer_loop_jitters_first_backup_then_keeps_the_interval():
    clock = FakeClock()
    collector = ScriptedCollector("ok", "ok", "ok")
    loop, reports = make_loop(collector, clock=clock)
    start = clock.now
    run(run_until_calls(loop, collector, 3))
    first = reports[0]["last_attempt_at"]
    assert start + 30 <= first <= start + 300
    attempts = [r["last_attempt_at"] for r in reports]
    assert [b - a for a, b in itertools.pairwise(attempts)] == [SCHEDULE.interval] * 2


def test_restored_state_resumes_schedule_and_stays_blocked():
    loop, _ = make_loop(ScriptedCollector(errors.HOST_KEY_MISMATCH))
    run(loop.tick())
    saved = loop.state
    again, _ = make_loop(ScriptedCollector())
    again.state = saved
    assert run(again.tick()).status == C.STATUS_HOSTKEY_BLOCKED


@pytest.mark.parametrize("kind", errors.ERROR_KINDS)
def test_every_error_kind_leaves_no_lock_or_permit(kind):
    permits, coordinator = FakePermits(), FakeCoordinator()
    loop, _ = make_loop(ScriptedCollector(kind), coordinator, permits)
    assert run(loop.tick()).error_kind == kind
    assert permits.held == 0 and coordinator.locks_held == 0


def test_permit_is_returned_before_publishing_but_the_lock_is_kept():
    permits, coordinator = FakePermits(), FakeCoordinator()
    seen = {}

    class Collector(ScriptedCollector):
        def deliver(self, fetched):
            seen["permits_held"], seen["locks_held"] = permits.held, coordinator.locks_held
            return super().deliver(fetched)

    loop, _ = make_loop(Collector("ok"), coordinator, permits)
    assert run(loop.tick()).ok
    assert seen == {"permits_held": 0, "locks_held": 1}


# -- inventory updates that arrive while a backup waits or runs (issue 9, item 2) ---------

ROTATED = Device(**{**DEVICE.__dict__, "credentials": CredentialRef(digest="d2")})


class UpdatingPermits(FakePermits):
    """Hands the loop a new inventory row while its backup waits for the permit."""

    def __init__(self, row):
        super().__init__()
        self.row, self.loop = row, None

    async def acquire(self, holder, lease_s):
        self.loop.update(self.row)
        return await super().acquire(holder, lease_s)


class LearningCollector(ScriptedCollector):
    """A backup that detects the version and trusts a host key on first use."""

    def fetch(self, device):
        fetched, _ = super().fetch(device)
        learned = Device(**{**device.__dict__, "routeros_version": "7.16",
                            "host_key_fingerprint": device.host_key_fingerprint or "SHA256:new"})
        return fetched, learned


def loop_with_update(row, collector, start=DEVICE):
    permits = UpdatingPermits(row)
    loop, _ = make_loop(collector, permits=permits)
    loop.device = start
    permits.loop = loop
    return loop


def test_credentials_rotated_during_a_backup_are_kept_with_what_it_learned():
    loop = loop_with_update(ROTATED, LearningCollector("ok"))
    assert run(loop.tick()).ok
    assert loop.device.credentials.digest == "d2"  # the rotation is not lost
    assert loop.device.routeros_version == "7.16"
    assert loop.device.host_key_fingerprint == "SHA256:new"


def test_host_key_reset_during_a_backup_is_not_undone():
    pinned = Device(**{**DEVICE.__dict__, "host_key_fingerprint": "SHA256:old"})
    reset = Device(**{**DEVICE.__dict__, "host_key_fingerprint": None})
    loop = loop_with_update(reset, LearningCollector("ok"), start=pinned)
    assert run(loop.tick()).ok
    assert loop.device.host_key_fingerprint is None  # back to trust on first use
    assert loop.device.routeros_version == "7.16"


def test_a_key_learned_from_an_old_address_is_not_pinned_to_the_new_one():
    moved = Device(**{**DEVICE.__dict__, "host": "127.0.0.2"})
    loop = loop_with_update(moved, LearningCollector("ok"))
    run(loop.tick())
    assert loop.device.host == "127.0.0.2" and loop.device.host_key_fingerprint is None


def test_auth_failure_with_credentials_rotated_meanwhile_does_not_block():
    collector = ScriptedCollector(errors.AUTH_FAILED, "ok")
    loop = loop_with_update(ROTATED, collector)
    result = run(loop.tick())
    assert result.error_kind == errors.AUTH_FAILED
    assert loop.state.last_status != C.STATUS_AUTH_BLOCKED  # the new credentials get a try
    assert loop.state.next_due <= loop.deps.clock.time()
    loop.deps.permits.row = loop.device
    assert run(loop.tick()).ok and collector.calls == 2


def test_auth_failure_with_unchanged_credentials_still_blocks():
    loop = loop_with_update(DEVICE, ScriptedCollector(errors.AUTH_FAILED))
    run(loop.tick())
    assert loop.state.last_status == C.STATUS_AUTH_BLOCKED


# -- no schedule drift (issue 9, item 6) --------------------------------------------------


class SlowCollector(ScriptedCollector):
    """Each backup (with its wait for a permit) takes ``seconds`` on the fake clock."""

    def __init__(self, clock, seconds, *results):
        super().__init__(*results)
        self.clock, self.seconds = clock, seconds

    def fetch(self, device):
        self.clock.now += self.seconds
        return super().fetch(device)


def test_next_backup_is_one_interval_after_the_previous_due_time_not_after_it_ended():
    clock = FakeClock()
    collector = SlowCollector(clock, 100, "ok", "ok", "ok")
    loop, reports = make_loop(collector, clock=clock)
    run(run_until_calls(loop, collector, 3))
    attempts = [r["last_attempt_at"] for r in reports]
    assert [b - a for a, b in itertools.pairwise(attempts)] == [SCHEDULE.interval] * 2


def test_a_loop_far_behind_waits_a_whole_interval_instead_of_a_burst():
    clock = FakeClock()
    loop, _ = make_loop(SlowCollector(clock, 2.5 * SCHEDULE.interval, "ok"), clock=clock)
    due = clock.now
    loop.state.next_due = due
    run(loop.tick())
    assert loop.state.next_due == clock.now + SCHEDULE.interval


def test_a_backup_that_waited_long_for_its_permit_is_followed_a_whole_interval_later():
    # The soak's finding: 60 devices starting at once on 2 cores waited 10-28 s for a
    # permit; on the old grid their second backup came that much less than an interval later.
    clock = FakeClock()
    wait = 0.2 * SCHEDULE.interval
    loop, _ = make_loop(SlowCollector(clock, wait, "ok"), clock=clock)
    due = clock.now
    loop.state.next_due = due
    run(loop.tick())
    assert loop.state.next_due == due + wait + SCHEDULE.interval


def test_a_small_delay_keeps_the_grid():
    clock = FakeClock()
    loop, _ = make_loop(SlowCollector(clock, 0.01 * SCHEDULE.interval, "ok"), clock=clock)
    due = clock.now
    loop.state.next_due = due
    run(loop.tick())
    assert loop.state.next_due == due + SCHEDULE.interval


def test_a_manual_trigger_leaves_the_schedule_alone():
    clock = FakeClock()
    loop, _ = make_loop(ScriptedCollector("ok"), clock=clock)
    loop.state.next_due = clock.now + 1000
    run(loop.tick(manual=True))
    assert loop.state.next_due == clock.now + 1000


# -- the per-device lock outlives the backup it protects (issue 9, item 4e) -----------------


def test_the_device_lock_is_renewed_while_a_long_backup_runs():
    from ray_backup.coordination.local import LocalCoordinator

    coordinator = LocalCoordinator()
    seen = {}

    class Slow(ScriptedCollector):
        def fetch(self, device):
            time.sleep(1.0)  # three times the lock's TTL
            seen["taken_by_another"] = coordinator.acquire_lock(device.id, 10) is not None
            return super().fetch(device)

    loop, _ = make_loop(Slow("ok"), coordinator)
    loop.deps.schedule = Schedule(interval=3600, jitter_min=0, jitter_max=0, lock_ttl=0.3,
                                  lease_s=200)
    assert run(loop.tick()).ok
    assert seen == {"taken_by_another": False}
    assert coordinator.acquire_lock(DEVICE.id, 10) is not None  # released after the backup


class ThreadNotingCoordinator(FakeCoordinator):
    """Notes the thread its lock calls run on."""

    def __init__(self, blocking):
        super().__init__()
        self.blocking = blocking
        self.threads = []

    def acquire_lock(self, device_id, ttl_s):
        self.threads.append(threading.get_ident())
        lock = super().acquire_lock(device_id, ttl_s)
        release = lock.release

        def noting_release():
            self.threads.append(threading.get_ident())
            release()

        lock.release = noting_release
        return lock


@pytest.mark.parametrize("blocking", [True, False])
def test_lock_calls_of_a_non_blocking_coordinator_stay_on_the_event_loop(blocking):
    coordinator = ThreadNotingCoordinator(blocking)
    loop, _ = make_loop(ScriptedCollector("ok"), coordinator)
    assert run(loop.tick()).ok
    assert coordinator.locks_held == 0 and len(coordinator.threads) == 2
    on_loop = [t == threading.get_ident() for t in coordinator.threads]
    assert on_loop == [not blocking, not blocking]
