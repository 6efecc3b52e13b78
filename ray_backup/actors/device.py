"""DeviceBackupActor: hosts the timer loop of one device (or, packed, of several).

Plain Python; ``actors.options`` applies the Ray options. Loops start on the
first call (the supervisor pings every actor right after creating it and on
each reconcile, which also restarts them after Ray restarted the process).
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import ray

from ray_backup import constants as C
from ray_backup.actors.selfstart import call_self_soon
from ray_backup.loop import DeviceLoop, LoopDeps, in_thread
from ray_backup.models import Device
from ray_backup.runtime import Runtime

log = logging.getLogger(__name__)


class SemaphorePermits:
    """The ``ssh-semaphore`` actor behind the loop's ``Permits`` interface."""

    def __init__(self, name: str = C.SEMAPHORE_NAME) -> None:
        self._name = name
        self._handle = None

    def _semaphore(self):
        if self._handle is None:
            self._handle = ray.get_actor(self._name, namespace=C.NAMESPACE)
        return self._handle

    async def acquire(self, holder: str, lease_s: float) -> str:
        try:
            return await self._semaphore().acquire.remote(holder, lease_s)
        except (ray.exceptions.RayActorError, ValueError):
            self._handle = None  # restarted or recreated: look it up again next time
            raise

    async def release(self, lease: str, holder: str) -> None:
        try:
            await self._semaphore().release.remote(lease, holder)
        except (ray.exceptions.RayActorError, ValueError) as exc:
            self._handle = None
            log.warning("could not return ssh permit (it will expire): %s", exc)


class SupervisorReporter:
    """Sends status rows to the supervisor without waiting on it."""

    def __init__(self, actor_name: str) -> None:
        self._actor_name = actor_name
        self._handle = None
        self._node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, row: dict) -> None:
        row["actor"] = self._actor_name
        row["node_id"] = self._node_id
        try:
            if self._handle is None:
                self._handle = ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
            self._handle.report.remote(row)
        except Exception:
            self._handle = None  # the supervisor re-reads the status from us when it restarts


class DeviceBackupActor:
    """One process, one or more device loops, each with its own state."""

    def __init__(self, name: str, devices: list[Device]) -> None:
        self._name = name
        self._pending = list(devices)
        self._loops: dict[str, DeviceLoop] = {}
        self._incarnation = uuid.uuid4().hex
        self._runtime: Runtime | None = None
        self._deps: LoopDeps | None = None
        self._start_lock: asyncio.Lock | None = None
        call_self_soon("ping")

    def __repr__(self) -> str:
        # Ray prefixes every log line of this process with it; set from the
        # constructor's devices because Ray reads it before the loops start.
        devices = [loop.device for loop in self._loops.values()] or self._pending
        if len(devices) == 1:
            d = devices[0]
            return f"DeviceBackupActor({self._name} {d.host}:{d.port})"
        return f"DeviceBackupActor({self._name}, {len(devices)} devices)"

    async def _ensure_started(self) -> None:
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._deps is None:
                self._runtime = await Runtime.start()
                self._deps = self._runtime.loop_deps(
                    SemaphorePermits(), report=SupervisorReporter(self._name)
                )
            if self._pending:
                self._pending = await _current_rows(self._pending)
            while self._pending:
                await self._start_loop(self._pending.pop(0))

    async def _start_loop(self, device: Device) -> None:
        assert self._deps is not None
        state = await in_thread(self._deps.coordinator.load_state, device.id)
        loop = DeviceLoop(device, self._deps, state)
        self._loops[device.id] = loop
        loop.start()
        log.info("device %s: backup loop started (%s)", device.id, device.label())

    async def ping(self) -> dict:
        """Start the loops if needed; say who and where we are, and what our spool holds."""
        await self._ensure_started()
        return {
            "name": self._name,
            "incarnation": self._incarnation,
            "node_id": ray.get_runtime_context().get_node_id(),
            "device_ids": sorted(self._loops),
            "spool_pending": await self._spool_pending(),
        }

    async def _spool_pending(self) -> int | None:
        """Snapshots in this node's spool, not yet delivered (shared by the node's actors)."""
        try:
            return await asyncio.to_thread(self._runtime.sink.pending)
        except Exception as exc:  # a metric: never fail the ping for it
            log.debug("spool size unknown: %s", exc)
            return None

    async def update(self, device: Device) -> None:
        """Add a device, or hand its loop a changed inventory row."""
        await self._ensure_started()
        if device.id in self._loops:
            self._loops[device.id].update(device)
        else:
            await self._start_loop(device)

    async def remove(self, device_id: str, forget_state: bool = True) -> int:
        """Stop one device's loop; return how many devices this actor still hosts."""
        loop = self._loops.pop(device_id, None)
        if loop is not None:
            await loop.stop()
            if forget_state and self._deps is not None:
                await in_thread(self._deps.coordinator.delete_state, device_id)
            log.info("device %s: removed from the inventory, loop stopped", device_id)
        return len(self._loops)

    async def trigger(self, device_id: str) -> dict:
        """Back up now, as the reference's manual trigger answers."""
        await self._ensure_started()
        loop = self._loops.get(device_id)
        if loop is None:
            return {"status": C.STATUS_FAILED, "sha256_hash": None, "error": f"unknown device {device_id}"}
        result = await loop.tick(manual=True)
        return {
            "device_id": device_id,
            "status": result.status,
            "sha256_hash": result.sha256_hash,
            "error": result.error,
            "error_kind": result.error_kind,
            "duration_s": result.duration_s,
        }

    async def status(self) -> list[dict]:
        await self._ensure_started()
        node = ray.get_runtime_context().get_node_id()
        rows = []
        for loop in self._loops.values():
            row = loop.row()
            row.update(actor=self._name, node_id=node)
            rows.append(row)
        return rows

    async def stop(self, grace_s: float = 10.0) -> None:
        """Finish or abandon running backups, then close connections; locks and permits are released."""
        await asyncio.gather(*(loop.stop(grace_s) for loop in self._loops.values()))
        if self._runtime is not None:
            await asyncio.to_thread(self._runtime.close)


async def _current_rows(devices: list[Device], patience_s: float = 60.0) -> list[Device]:
    """The supervisor's current rows for ``devices``.

    Ray restarts a dead actor with its creation-time arguments, which may predate
    a trusted host key or new credentials; starting from them could trust a
    changed key. Falls back to them only if the supervisor stays unreachable.
    """
    deadline = asyncio.get_running_loop().time() + patience_s
    while True:
        try:
            supervisor = ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
            current = await asyncio.wait_for(
                supervisor.current_rows.remote([d.id for d in devices]), 10
            )
            return [current.get(d.id, d) for d in devices]
        except Exception as exc:
            if asyncio.get_running_loop().time() > deadline:
                log.warning("supervisor unreachable (%s); starting from creation-time rows", exc)
                return devices
            await asyncio.sleep(2)
