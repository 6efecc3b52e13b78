"""One-shot fleet backup: every device (or the chosen ones) once, in parallel on Ray.

Goes through the running job's SSH semaphore when a job runs on the cluster,
else through a semaphore of its own with the same limit. A device whose worker
died or could not be reached is tried once more on a fresh worker: a busy node
can lose a worker process, and that is no reason to report its devices failed
(a repeated snapshot of a device is harmless, the history deduplicates it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable

import ray

from ray_backup import constants as C
from ray_backup import errors, job
from ray_backup.actors import options
from ray_backup.models import BackupResult, Device
from ray_backup.runtime import schedule
from ray_backup.settings import Settings

log = logging.getLogger(__name__)

# What ray.get raises when the worker, not the backup, failed. ActorDiedError and
# ActorUnavailableError are RayActorErrors.
WORKER_LOST = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError)


def backup_fleet(
    settings: Settings,
    devices: Iterable[Device],
    env: dict[str, str],
    on_result: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Back up ``devices`` once; return one result dict per device, in completion order."""
    devices = list(devices)
    if not devices:
        return []
    job.connect()
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    semaphore_name, temporary = _semaphore(settings, nodes)
    pool = WorkerPool(nodes, semaphore_name, env)
    try:
        return _run(pool, devices, on_result, lock_ttl_s=schedule(settings).lock_ttl)
    finally:
        pool.close()
        if temporary is not None:
            ray.kill(temporary)


def _semaphore(settings: Settings, nodes: list[str]):
    """The semaphore's name (None: each worker's own) and a temporary one to kill after."""
    try:
        ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
        return C.SEMAPHORE_NAME, None
    except ValueError:
        pass
    if len(nodes) == 1 and not settings.logins_per_second:
        # No job, one node, one worker: its own asyncio semaphore holds the limit,
        # without two actor calls per backup.
        return None, None
    name = f"{C.SEMAPHORE_NAME}-oneshot-{uuid.uuid4().hex[:8]}"
    temporary = options.temporary_semaphore(name, settings.max_concurrent, settings.logins_per_second)
    ray.get(temporary.ping.remote())
    return name, temporary


class WorkerPool:
    """One worker per node; a lost worker is replaced by a fresh one on the same node
    (on another if that node is gone: the placement is soft)."""

    def __init__(self, nodes: list[str], semaphore_name: str | None, env: dict[str, str]) -> None:
        self._nodes = nodes
        self._semaphore_name = semaphore_name
        self._env = env
        self.workers = [self._new(node) for node in nodes]
        self._lost: list = []

    def _new(self, node: str):
        return options.fleet_worker(node, self._semaphore_name, self._env)

    def submit(self, slot: int, device: Device, locked_patience_s: float = 0.0):
        """The backup's object ref and the worker it went to."""
        worker = self.workers[slot]
        return worker.backup.remote(device, locked_patience_s), worker

    def replace(self, slot: int, lost) -> None:
        if self.workers[slot] is lost:  # only the first of its devices to notice replaces it
            self._lost.append(lost)
            self.workers[slot] = self._new(self._nodes[slot])

    def close(self) -> None:
        try:
            ray.get([w.close.remote() for w in self.workers], timeout=60)
        except Exception as exc:  # closing is tidying up; the results are in
            log.warning("a fleet worker did not close cleanly: %s", exc)
        for worker in [*self.workers, *self._lost]:
            ray.kill(worker)


def _run(pool: WorkerPool, devices: list[Device], on_result, lock_ttl_s: float) -> list[dict]:
    pending: dict = {}

    def submit(device: Device, slot: int, retried: bool) -> None:
        # A retry outwaits the device lock the lost worker may still hold.
        ref, worker = pool.submit(slot, device, lock_ttl_s + 5 if retried else 0.0)
        pending[ref] = (device, slot, worker, retried)

    for i, device in enumerate(devices):
        submit(device, i % len(pool.workers), False)
    results: list[dict] = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            device, slot, worker, retried = pending.pop(ref)
            try:
                result = ray.get(ref)
            except WORKER_LOST as exc:
                if not retried:
                    log.warning("device %s: worker lost (%s); retrying on a fresh worker",
                                device.id, type(exc).__name__)
                    pool.replace(slot, worker)
                    submit(device, slot, True)
                    continue
                result = _lost(device, exc, "worker lost twice (retried on a fresh worker)")
            except Exception as exc:  # the worker's own bug: this device failed, the rest go on
                result = _lost(device, exc, "worker failed")
            results.append(result)
            if on_result:
                on_result(result)
    return results


def _lost(device: Device, exc: BaseException, what: str) -> dict:
    first_line = (str(exc).strip().splitlines() or [""])[0][:160]
    return BackupResult(
        device_id=device.id, status=C.STATUS_FAILED, error_kind=errors.UNKNOWN,
        error=f"{what}: {type(exc).__name__}: {first_line}".rstrip(": "),
    ).to_json()
