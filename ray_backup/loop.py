"""DeviceLoop: one device's state and timer loop, and the backup tick.

Plain asyncio, no Ray: the actor hosts one (or, packed, several) of these, and
unit tests drive it with fakes and a fake clock. Blocking work (Redis, SSH) runs
in threads so one process can keep many device loops going.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ray_backup import constants as C
from ray_backup import state as sm
from ray_backup.backup import Collector
from ray_backup.coordination.renewal import LockRenewer
from ray_backup.models import BackupResult, Device, DeviceState

log = logging.getLogger(__name__)

# asyncio's default executor has min(32, CPUs + 4) threads: on a 2-CPU node six hung
# devices would hold all of them, and the healthy devices of the same process would
# wait out the hung ones' timeouts. A backup holds one thread at a time and every
# blocking call has a timeout, so a large pool is safe; threads start only when needed.
BLOCKING_THREADS = 512
_blocking_pool = concurrent.futures.ThreadPoolExecutor(
    BLOCKING_THREADS, thread_name_prefix="ray-backup-io"
)
# After a tick failed with an error that is not the device's (no result to back off from).
TICK_RETRY_S = 60.0


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run blocking ``fn(*args)`` (SSH, Redis, the sink) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(
        _blocking_pool, functools.partial(fn, *args)
    )


class Permits(Protocol):
    """The SSH semaphore as the loop sees it."""

    async def acquire(self, holder: str, lease_s: float) -> Any: ...
    async def release(self, lease: Any, holder: str) -> None: ...


class Clock(Protocol):
    def time(self) -> float: ...
    async def wait(self, event: asyncio.Event, timeout: float) -> bool: ...


class RealClock:
    def time(self) -> float:
        return time.time()

    async def wait(self, event: asyncio.Event, timeout: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout=max(0.0, timeout))
            return True
        except asyncio.TimeoutError:
            return False


@dataclass(frozen=True)
class Schedule:
    interval: float
    jitter_min: float
    jitter_max: float
    lock_ttl: float
    lease_s: float


@dataclass
class LoopDeps:
    collector: Collector
    coordinator: Any  # coordination.base.Coordinator
    permits: Permits
    schedule: Schedule
    report: Callable[[dict], Awaitable[None] | None] = lambda row: None
    clock: Clock = field(default_factory=RealClock)
    rng: random.Random = field(default_factory=random.Random)


class DeviceLoop:
    """Keeps one device backed up on schedule."""

    def __init__(self, device: Device, deps: LoopDeps, state: DeviceState | None = None) -> None:
        self.device = device
        self.deps = deps
        self.state = state or DeviceState()
        self.changed: bool | None = None
        self.last_duration_s: float | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._busy = asyncio.Lock()
        self._task: asyncio.Task | None = None
        sm.unblock_if_changed(self.state, device)

    def __repr__(self) -> str:
        return f"DeviceLoop({self.device.label()}, {self.state.last_status})"

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name=self.device.id)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Let a running backup finish within ``grace_s``, then abandon it."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout=grace_s)
        except asyncio.TimeoutError:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        except asyncio.CancelledError:
            pass

    def update(self, device: Device) -> None:
        """A changed inventory row: new address, credentials or stored host key."""
        self.device = device
        if sm.unblock_if_changed(self.state, device):
            log.info("device %s: credentials or host key changed; unblocked", device.id)
            self.state.next_due = self.deps.clock.time()
            self._save()
            self._wake.set()

    # -- the timer loop ------------------------------------------------------------
    async def run(self) -> None:
        clock, sched = self.deps.clock, self.deps.schedule
        now = clock.time()
        if self.state.next_due is None or self.state.next_due < now:
            # First start, or overdue after a restart: spread the fleet out.
            delay = sm.jitter_seconds(sched.jitter_min, sched.jitter_max, self.deps.rng)
            self.state.next_due = now + delay
            await in_thread(self._save)
        log.debug("device %s: first backup in %.0f s", self.device.id, self.state.next_due - now)
        while not self._stopping:
            self._wake.clear()
            remaining = self.state.next_due - clock.time()
            if remaining > 0:
                await clock.wait(self._wake, remaining)
                continue
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one tick must not end the device's schedule
                # Usually the infrastructure (the semaphore actor restarting), not the
                # device: try again soon rather than a whole interval later.
                log.exception("device %s: tick failed; retrying in %.0f s", self.device.id,
                              min(sched.interval, TICK_RETRY_S))
                self.state.next_due = clock.time() + min(sched.interval, TICK_RETRY_S)

    async def tick(self, manual: bool = False) -> BackupResult:
        """One backup attempt with all gating; ``manual`` skips the online and block gates."""
        async with self._busy:
            due = self.state.next_due
            result, attempted = await self._tick(manual)
            now = self.deps.clock.time()
            # A block belongs to the row the backup ran with; a row that changed meanwhile
            # (rotated credentials, reset host key) is tried at once, not blocked.
            sm.record_result(self.state, result, attempted, now)
            self._schedule_next(due, now - (result.duration_s or 0.0), now, manual)
            if sm.unblock_if_changed(self.state, self.device):
                log.info("device %s: credentials or host key changed during the backup; "
                         "retrying with them", self.device.id)
                self.state.next_due = now
            # In a thread: a hung Redis costs a socket timeout, which must not stop the
            # other loops of this process. Under the lock: this device's saves stay in order.
            await in_thread(self._save)
        await self._report(result)
        return result

    async def _tick(self, manual: bool) -> tuple[BackupResult, Device]:
        """The result, and the row the backup ran with (with what it learned)."""
        dev, deps = self.device, self.deps
        if not manual:
            if not await calling(deps.coordinator)(deps.coordinator.is_online, dev.id):
                log.debug("device %s: skipped, offline", dev.id)
                return BackupResult(dev.id, C.STATUS_SKIPPED_OFFLINE), dev
            reason = sm.gate(self.state, deps.clock.time())
            if reason:
                log.info("device %s: skipped, %s", dev.id, reason)
                return BackupResult(dev.id, reason), dev
        sm.record_attempt(self.state, deps.clock.time())
        result, learned = await guarded_backup(dev, deps)
        # ``update()`` may have brought a newer row while the backup waited or ran.
        self.device = merge_learned(self.device, dev, learned)
        self._log_result(result)
        return result, learned

    def _schedule_next(self, due: float | None, began: float, now: float, manual: bool) -> None:
        """``began``: when the backup's SSH session began (after its permit and lock)."""
        interval = self.deps.schedule.interval
        if manual and due is not None and due > now:
            nxt = due  # an operator's extra backup leaves the schedule as it was
        else:
            nxt = next_due_after(due if due is not None else now, began, now, interval)
        if self.state.backoff_until > now:
            # Retry when the backoff ends, not a whole interval later.
            nxt = min(nxt, self.state.backoff_until)
        self.state.next_due = nxt

    def _log_result(self, result: BackupResult) -> None:
        previous = self.state.last_hash
        self.last_duration_s = result.duration_s
        if result.status == C.STATUS_LOCKED:
            return
        if result.ok:
            self.changed = bool(previous) and previous != result.sha256_hash
            log.info(
                "device %s: backup ok in %.1f s, sha256 %s%s", self.device.id, result.duration_s,
                result.sha256_hash[:12], " (changed)" if self.changed else "",
            )
        else:
            log.warning(
                "device %s: backup failed (%s): %s", self.device.id, result.error_kind, result.error
            )

    def _save(self) -> None:
        try:
            self.deps.coordinator.save_state(self.device.id, self.state)
        except Exception as exc:  # the coordinator keeps it pending; never stop the loop
            log.warning("device %s: could not persist state: %s", self.device.id, exc)

    async def _report(self, result: BackupResult) -> None:
        try:
            maybe = self.deps.report(self.row(result))
            if asyncio.iscoroutine(maybe) or isinstance(maybe, asyncio.Future):
                await maybe
        except Exception as exc:
            log.debug("device %s: status report not delivered: %s", self.device.id, exc)

    def row(self, result: BackupResult | None = None) -> dict:
        """The device's line in the fleet status table; holds no secret."""
        s, d = self.state, self.device
        return {
            "device_id": d.id,
            "hostname": d.hostname,
            "host": d.host,
            "port": d.port,
            "routeros_version": d.routeros_version,
            "host_key_fingerprint": d.host_key_fingerprint,
            "status": s.last_status,
            "last_attempt_at": s.last_attempt_at,
            "last_success_at": s.last_success_at,
            "last_error_kind": s.last_error_kind or None,
            "last_error": s.last_error or None,
            "consecutive_failures": s.consecutive_failures,
            "backoff_until": s.backoff_until or None,
            "next_due": s.next_due,
            "sha256_hash": s.last_hash or None,
            "changed": self.changed,
            "result_status": result.status if result else None,
            "duration_s": result.duration_s if result else self.last_duration_s,
        }


# A session that began later than this share of the interval after its due time (it waited
# for an SSH permit in a start-up rush, or the loop fell behind) moves the schedule with it.
LATE_SHARE = 0.05


def next_due_after(due: float, began: float, now: float, interval: float) -> float:
    """One interval after the previous due time, so backups do not drift by their own
    duration or by small delays. A session that began late (waiting for a permit in a
    start-up rush, a long outage) is followed one whole interval after it began: keeping
    the old grid would squeeze the next backup closer than the interval, or fire a
    burst of catch-up backups."""
    if began - due > LATE_SHARE * interval:
        return max(began + interval, now)
    nxt = due + interval
    if nxt <= now:
        nxt += (math.floor((now - nxt) / interval) + 1) * interval
    return nxt


def merge_learned(current: Device, started: Device, learned: Device) -> Device:
    """``current`` (the newest inventory row) with what a backup of ``started`` learned.

    Only what the backup changed is carried over, and only where the inventory did not
    change it meanwhile: a host key reset during the backup stays reset, and a key seen
    at an old address is not pinned to a new one.
    """
    changes: dict[str, Any] = {}
    if (learned.routeros_version != started.routeros_version
            and current.routeros_version == started.routeros_version):
        changes["routeros_version"] = learned.routeros_version
    if (learned.host_key_fingerprint != started.host_key_fingerprint
            and current.host_key_fingerprint == started.host_key_fingerprint
            and (current.host, current.port) == (started.host, started.port)):
        changes["host_key_fingerprint"] = learned.host_key_fingerprint
    return dataclasses.replace(current, **changes) if changes else current


async def guarded_backup(device: Device, deps: LoopDeps) -> tuple[BackupResult, Device]:
    """Take an SSH permit, then the device's lock; back up; give both back.

    The permit covers the SSH session only: it goes back before publishing, so a
    slow or absent broker never holds SSH capacity. The lock covers both, so one
    device's snapshots are published in the order they were taken; it is renewed
    while they run, so it cannot expire under a slow backup.
    """
    lease = await deps.permits.acquire(device.id, deps.schedule.lease_s)
    lease_held = True
    coordinate = calling(deps.coordinator)
    try:
        lock = await coordinate(deps.coordinator.acquire_lock, device.id, deps.schedule.lock_ttl)
        if lock is None:
            log.info("device %s: skipped, locked by another process", device.id)
            return BackupResult(device.id, C.STATUS_LOCKED), device
        try:
            async with LockRenewer(lock, deps.schedule.lock_ttl, coordinate):
                fetched, device = await in_thread(deps.collector.fetch, device)
                lease_held = False
                await deps.permits.release(lease, device.id)
                if isinstance(fetched, BackupResult):
                    return fetched, device
                return await in_thread(deps.collector.deliver, fetched), device
        finally:
            await coordinate(_release_quietly, lock, device.id)
    finally:
        if lease_held:
            await deps.permits.release(lease, device.id)


def calling(coordinator: Any) -> Callable[..., Awaitable[Any]]:
    """How to call ``coordinator``: in a thread (``in_thread``; a hung Redis costs a socket
    timeout), or on the event loop when it says its calls never wait on I/O (``blocking =
    False``: in memory), where thread hand-offs would cost more than the calls."""
    return in_thread if getattr(coordinator, "blocking", True) else _inline


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def _release_quietly(lock: Any, device_id: str) -> None:
    try:
        lock.release()
    except Exception as exc:
        log.warning("device %s: could not release backup lock: %s", device_id, exc)
