"""FleetWorker: backs up the devices of one-shot fleet backups, many at a time.

One worker per node, named ``fleet-worker:<node id>`` and kept between sweeps (a
process start and the parts of a ``Runtime`` cost seconds; a sweep should not pay
them again). A sweep hands a worker all of its devices in one call and gets the
results back as a stream, in completion order, several to a message when they come
together. Each sweep brings its own settings (as environment variables, no secrets):
the worker keeps a ``Runtime`` per distinct set, so later sweeps with the same
settings reuse its connections. ``ray-backup stop`` removes the workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator

from ray_backup import constants as C
from ray_backup import errors, logs
from ray_backup.actors.permits import LocalPermits, PooledPermits
from ray_backup.actors.plan import SweepPlan, code_id
from ray_backup.coordination.local import LocalCoordinator
from ray_backup.inventory.base import open_inventory
from ray_backup.inventory.trust import InventoryHostKeys, VerifyNotes
from ray_backup.loop import LoopDeps, guarded_backup, in_thread
from ray_backup.models import Device
from ray_backup.runtime import Runtime
from ray_backup.settings import Settings

log = logging.getLogger(__name__)

LOCKED_POLL_S = 2.0
# Runtimes kept for settings no running sweep uses (each holds its sink and coordinator).
IDLE_RUNTIMES = 4


class _Cached:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.users = 0


class FleetWorker:
    def __init__(self) -> None:
        self._runtimes: OrderedDict[tuple, _Cached] = OrderedDict()
        self._verify_notes: dict[tuple, VerifyNotes] = {}
        self._lock = asyncio.Lock()
        self.sweeps = 0

    def __repr__(self) -> str:
        return f"FleetWorker(runtimes={len(self._runtimes)}, sweeps={self.sweeps})"

    def info(self) -> dict:
        return {"pid": os.getpid(), "sweeps": self.sweeps, "runtimes": len(self._runtimes)}

    async def sweep(self, env: dict[str, str], devices: list[Device],
                    plan: SweepPlan) -> AsyncIterator[list[dict]]:
        """Back up ``devices``; yield their results (``BackupResult.to_json()``) as they come."""
        if plan.code and plan.code != code_id():
            raise errors.StaleWorker(f"fleet worker runs code {code_id()}, driver {plan.code}")
        self.sweeps += 1
        logs.setup(plan.log_level)
        cached = await self._runtime(env)
        permits = (PooledPermits(plan.semaphore, plan.holder) if plan.semaphore
                   else LocalPermits(plan.limit))
        deps = cached.runtime.loop_deps(permits)
        done: asyncio.Queue[dict] = asyncio.Queue()

        async def one(device: Device) -> None:
            try:
                result = await backup_one(device, deps, plan.locked_patience_s)
            except Exception as exc:  # a bug here must not lose the device's answer
                log.exception("device %s: one-shot backup failed", device.id)
                result = _error(device, exc)
            done.put_nowait(result)

        tasks = [asyncio.ensure_future(one(d)) for d in devices]
        remaining = len(tasks)
        try:
            while remaining:
                # One message per device at most; those that finished together go together.
                batch = [await done.get()]
                while not done.empty():
                    batch.append(done.get_nowait())
                remaining -= len(batch)
                yield batch
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await permits.close()
            cached.users -= 1

    async def _runtime(self, env: dict[str, str]) -> _Cached:
        key = tuple(sorted(env.items()))
        async with self._lock:
            cached = self._runtimes.get(key)
            if cached is None:
                settings = Settings.load(environ={**os.environ, **env})
                cached = _Cached(await in_thread(Runtime, settings, None, self._notes(settings)))
                self._runtimes[key] = cached
                await self._evict()
            self._runtimes.move_to_end(key)
            cached.users += 1
            return cached

    def _notes(self, settings: Settings) -> VerifyNotes:
        """One per inventory: a key verified in one sweep need not be noted again by the
        next (each note rewrites the inventory's host-key record), whatever its sink."""
        where = (settings.inventory_file, settings.database_url)
        if where not in self._verify_notes:
            self._verify_notes[where] = VerifyNotes(
                InventoryHostKeys(lambda: open_inventory(settings)))
        return self._verify_notes[where]

    async def _evict(self) -> None:
        idle = [k for k, c in self._runtimes.items() if c.users == 0]
        for key in idle[:max(0, len(idle) - IDLE_RUNTIMES)]:
            await in_thread(self._runtimes.pop(key).runtime.close)

    async def close(self) -> None:
        """Close every runtime (``ray-backup stop`` kills the worker after this)."""
        async with self._lock:
            while self._runtimes:
                await in_thread(self._runtimes.popitem()[1].runtime.close)
            for notes in self._verify_notes.values():
                await in_thread(notes.close)
            self._verify_notes.clear()


async def backup_one(device: Device, deps: LoopDeps, locked_patience_s: float = 0.0) -> dict:
    """One backup with online gating, permit and lock; the result as JSON-ready dict.

    ``locked_patience_s``: how long to keep trying while the device is locked. A
    retry after a lost worker needs it: the lost worker's lock outlives it until
    its TTL, and ``locked`` would then be reported for a device nobody backed up.
    """
    if not await _online(deps.coordinator, device.id):
        return {"device_id": device.id, "status": C.STATUS_SKIPPED_OFFLINE, "sha256_hash": None,
                "error_kind": None, "error": None, "duration_s": 0.0}
    deadline = time.monotonic() + locked_patience_s
    while True:
        result, _ = await guarded_backup(device, deps)
        if result.status != C.STATUS_LOCKED or time.monotonic() >= deadline:
            return result.to_json()
        await asyncio.sleep(min(LOCKED_POLL_S, max(0.0, deadline - time.monotonic())))


async def _online(coordinator, device_id: str) -> bool:
    # Without Redis every device is online: no thread hop for a known answer.
    if isinstance(coordinator, LocalCoordinator):
        return True
    return await in_thread(coordinator.is_online, device_id)


def _error(device: Device, exc: BaseException) -> dict:
    from ray_backup.oneshot import lost_result

    return lost_result(device, exc, "fleet worker failed")
