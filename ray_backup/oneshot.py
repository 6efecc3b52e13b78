"""One-shot fleet backup: every device (or the chosen ones) once, in parallel on Ray.

Goes through the running job's SSH semaphore when a job runs on the cluster,
else through a semaphore of its own with the same limit.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

import ray

from ray_backup import constants as C
from ray_backup import job
from ray_backup.actors import options
from ray_backup.models import Device
from ray_backup.settings import Settings


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
    temporary = None
    semaphore_name: str | None = C.SEMAPHORE_NAME
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
    try:
        ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
    except ValueError:
        if len(nodes) == 1 and not settings.logins_per_second:
            # No job, one node, one worker: its own asyncio semaphore holds the limit,
            # without two actor calls per backup.
            semaphore_name = None
        else:
            semaphore_name = f"{C.SEMAPHORE_NAME}-oneshot-{uuid.uuid4().hex[:8]}"
            temporary = options.temporary_semaphore(
                semaphore_name, settings.max_concurrent, settings.logins_per_second
            )
            ray.get(temporary.ping.remote())
    workers = [options.fleet_worker(node, semaphore_name, env) for node in nodes]
    pending = {workers[i % len(workers)].backup.remote(d): d for i, d in enumerate(devices)}
    results: list[dict] = []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                device = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # a worker died: this device failed, the rest go on
                    result = {"device_id": device.id, "status": C.STATUS_FAILED, "sha256_hash": None,
                              "error_kind": "unknown", "error": f"worker lost: {type(exc).__name__}",
                              "duration_s": 0.0}
                results.append(result)
                if on_result:
                    on_result(result)
    finally:
        ray.get([w.close.remote() for w in workers], timeout=60)
        for actor in [*workers, temporary]:
            if actor is not None:
                ray.kill(actor)
    return results
