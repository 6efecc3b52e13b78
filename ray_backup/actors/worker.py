"""FleetWorker: backs up devices on request (one-shot fleet backups), many at a time.

One worker process per node serves every device it is handed, each backup in
a thread, gated by the cluster's SSH semaphore and the per-device lock.
"""

from __future__ import annotations

import asyncio
import time

from ray_backup import constants as C
from ray_backup.actors.device import SemaphorePermits
from ray_backup.loop import LoopDeps, guarded_backup, in_thread
from ray_backup.models import Device
from ray_backup.runtime import Runtime

LOCKED_POLL_S = 2.0


class LocalPermits:
    """An in-process SSH limit, for a one-shot backup with one worker and no job."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)

    async def acquire(self, holder: str, lease_s: float) -> int:
        await self._semaphore.acquire()
        return 0

    async def release(self, lease: int, holder: str) -> None:
        self._semaphore.release()


class FleetWorker:
    def __init__(self, semaphore_name: str | None = C.SEMAPHORE_NAME) -> None:
        self._semaphore_name = semaphore_name
        self._deps: LoopDeps | None = None
        self._runtime: Runtime | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return "FleetWorker()"

    async def _ensure(self) -> LoopDeps:
        async with self._lock:
            if self._deps is None:
                self._runtime = await Runtime.start(job_member=False)
                limit = self._runtime.settings.max_concurrent
                self._deps = self._runtime.loop_deps(
                    SemaphorePermits(self._semaphore_name) if self._semaphore_name
                    else LocalPermits(limit)
                )
        return self._deps

    async def backup(self, device: Device, locked_patience_s: float = 0.0) -> dict:
        """One backup with online gating, permit and lock; the result as JSON-ready dict.

        ``locked_patience_s``: how long to keep trying while the device is locked. A
        retry after a lost worker needs it: the lost worker's lock outlives it until
        its TTL, and ``locked`` would then be reported for a device nobody backed up.
        """
        deps = await self._ensure()
        if not await in_thread(deps.coordinator.is_online, device.id):
            return {"device_id": device.id, "status": C.STATUS_SKIPPED_OFFLINE, "sha256_hash": None,
                    "error_kind": None, "error": None, "duration_s": 0.0}
        deadline = time.monotonic() + locked_patience_s
        while True:
            result, _ = await guarded_backup(device, deps)
            if result.status != C.STATUS_LOCKED or time.monotonic() >= deadline:
                return result.to_json()
            await asyncio.sleep(min(LOCKED_POLL_S, max(0.0, deadline - time.monotonic())))

    async def close(self) -> None:
        if self._runtime is not None:
            await asyncio.to_thread(self._runtime.close)
