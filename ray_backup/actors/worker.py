"""FleetWorker: backs up the devices of one-shot fleet backups, many at a time.

One worker per node, named ``fleet-worker:<node id>`` and kept between sweeps (a
process start, importing the backup path, costs seconds; a sweep should not pay it
again). A sweep hands a worker all of its devices in one call and gets the results
back as a stream, in completion order, several to a message when they come together.
Each sweep brings its own settings (as environment variables, no secrets) and gets a
``Runtime`` of its own (a few ms); host-key "verified" notes are shared per inventory.
``ray-backup stop`` removes the workers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator

from ray_backup import constants as C
from ray_backup import errors, logs
from ray_backup.actors.permits import LocalPermits, PooledPermits
from ray_backup.actors.plan import SweepPlan, code_id
from ray_backup.credentials.resolver import FileLogins
from ray_backup.inventory.base import open_inventory
from ray_backup.inventory.trust import InventoryHostKeys, VerifyNotes
from ray_backup.loop import LoopDeps, calling, guarded_backup, in_thread
from ray_backup.models import Device
from ray_backup.runtime import Runtime
from ray_backup.settings import Settings

log = logging.getLogger(__name__)

LOCKED_POLL_S = 2.0


class FleetWorker:
    def __init__(self) -> None:
        self._verify_notes: dict[tuple, VerifyNotes] = {}
        # Inventory files' logins, kept between sweeps while the file is unchanged: parsing
        # a 240-device YAML costs ~50-150 ms, which held up every sweep's first backups.
        self._file_logins = FileLogins()
        self._lock = asyncio.Lock()
        self.sweeps = 0

    def __repr__(self) -> str:
        return f"FleetWorker(sweeps={self.sweeps})"

    def info(self) -> dict:
        return {"pid": os.getpid(), "sweeps": self.sweeps}

    async def sweep(self, env: dict[str, str], devices: list[Device],
                    plan: SweepPlan) -> AsyncIterator[list[dict]]:
        """Back up ``devices``; yield their results (``BackupResult.to_json()``) as they come."""
        if plan.code and plan.code != code_id():
            raise errors.StaleWorker(f"fleet worker runs code {code_id()}, driver {plan.code}")
        self.sweeps += 1
        logs.setup(plan.log_level)
        settings = Settings.load(environ={**os.environ, **env})
        # A Runtime per sweep (a few ms): its sink writes history, whose state must be read
        # afresh by each sweep (the job's actors write the same history in between).
        runtime = await in_thread(Runtime, settings, None, self._notes(settings),
                                  self._file_logins)
        permits = (PooledPermits(plan.semaphore, plan.holder) if plan.semaphore
                   else LocalPermits(plan.limit))
        deps = runtime.loop_deps(permits)
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
            await in_thread(runtime.close)

    def _notes(self, settings: Settings) -> VerifyNotes:
        """One per inventory: a key verified in one sweep need not be noted again by the
        next (each note rewrites the inventory's host-key record), whatever its sink."""
        where = (settings.inventory_file, settings.database_url)
        if where not in self._verify_notes:
            self._verify_notes[where] = VerifyNotes(
                InventoryHostKeys(lambda: open_inventory(settings)))
        return self._verify_notes[where]

    async def close(self) -> None:
        """Stop the host-key notes (``ray-backup stop`` kills the worker after this)."""
        async with self._lock:
            for notes in self._verify_notes.values():
                await in_thread(notes.close)
            self._verify_notes.clear()
            self._file_logins.clear()


async def backup_one(device: Device, deps: LoopDeps, locked_patience_s: float = 0.0) -> dict:
    """One backup with online gating, permit and lock; the result as JSON-ready dict.

    ``locked_patience_s``: how long to keep trying while the device is locked. A
    retry after a lost worker needs it: the lost worker's lock outlives it until
    its TTL, and ``locked`` would then be reported for a device nobody backed up.
    """
    if not await calling(deps.coordinator)(deps.coordinator.is_online, device.id):
        return {"device_id": device.id, "status": C.STATUS_SKIPPED_OFFLINE, "sha256_hash": None,
                "error_kind": None, "error": None, "duration_s": 0.0}
    deadline = time.monotonic() + locked_patience_s
    while True:
        result, _ = await guarded_backup(device, deps)
        if result.status != C.STATUS_LOCKED or time.monotonic() >= deadline:
            return result.to_json()
        await asyncio.sleep(min(LOCKED_POLL_S, max(0.0, deadline - time.monotonic())))


def _error(device: Device, exc: BaseException) -> dict:
    from ray_backup.oneshot import lost_result

    return lost_result(device, exc, "fleet worker failed")
