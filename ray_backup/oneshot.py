"""One-shot fleet backup: every device (or the chosen ones) once, in parallel on Ray.

Each node's persistent fleet worker (``actors.worker``) gets that node's share of the
devices in one call and streams the results back as they come, so the first result
arrives about one backup after the call and a sweep costs no process start once the
workers exist. Goes through the running job's SSH semaphore when a job runs on the
cluster, else through a limit of its own (a temporary semaphore when there are
several nodes or a login rate). A device whose worker died or could not be reached
is tried once more on a fresh worker (Ray restarts the worker): a busy node can lose
a worker process, and that is no reason to report its devices failed (a repeated
snapshot of a device is harmless, the history deduplicates it).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import ray

from ray_backup import constants as C
from ray_backup import errors, job
from ray_backup.actors import options
from ray_backup.actors.plan import SweepPlan, code_id
from ray_backup.models import BackupResult, Device
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
    log_level: str = "WARNING",
) -> list[dict]:
    """Back up ``devices`` once; return one result dict per device, in completion order.

    ``log_level``: what the fleet workers log (their lines reach this driver's stderr).
    """
    devices = list(devices)
    if not devices:
        return []
    job.connect(include_dashboard=False)  # a Ray started here lives as long as this process
    nodes = alive_nodes()
    semaphore_name, temporary = _semaphore(settings, nodes)
    sweep_id = uuid.uuid4().hex[:8]
    plans = {
        node: SweepPlan(semaphore=semaphore_name, limit=settings.max_concurrent,
                        holder=f"oneshot-{sweep_id}:{node[:8]}", log_level=log_level,
                        code=code_id())
        for node in nodes
    }
    try:
        return _run(plans, devices, env, on_result, settings)
    finally:
        if temporary is not None:
            ray.kill(temporary)


def alive_nodes() -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


def warm_up() -> int:
    """Have every node's fleet worker exist (created in the background); how many nodes."""
    nodes = alive_nodes()
    for node in nodes:
        options.fleet_worker(node)
    return len(nodes)


def remove_workers() -> int:
    """Kill every node's fleet worker for good; how many there were."""
    removed = 0
    for info in ray.util.list_named_actors(all_namespaces=True):
        if info.get("namespace") == C.NAMESPACE and info["name"].startswith(C.FLEET_WORKER_PREFIX):
            try:
                ray.kill(ray.get_actor(info["name"], namespace=C.NAMESPACE), no_restart=True)
                removed += 1
            except ValueError:
                pass
    return removed


def _semaphore(settings: Settings, nodes: list[str]):
    """The semaphore's name (None: each worker's own) and a temporary one to kill after."""
    try:
        ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
        return C.SEMAPHORE_NAME, None
    except ValueError:
        pass
    if len(nodes) == 1 and not settings.logins_per_second:
        # No job, one node, one worker: its own asyncio semaphore holds the limit,
        # without actor calls for permits.
        return None, None
    name = f"{C.SEMAPHORE_NAME}-oneshot-{uuid.uuid4().hex[:8]}"
    temporary = options.temporary_semaphore(name, settings.max_concurrent, settings.logins_per_second)
    ray.get(temporary.ping.remote())
    return name, temporary


@dataclass
class _Stream:
    """One worker's share of a sweep: the devices it has not answered for yet."""

    node: str
    pending: dict[str, Device] = field(default_factory=dict)
    retried: bool = False


def _run(plans: dict[str, SweepPlan], devices: list[Device], env: dict[str, str], on_result,
         settings: Settings) -> list[dict]:
    nodes = list(plans)
    workers = {node: options.fleet_worker(node) for node in nodes}
    streams: dict = {}

    def submit(node: str, share: list[Device], retried: bool) -> None:
        plan = plans[node]
        if retried:  # outwait the device locks the lost worker may still hold
            from ray_backup.runtime import schedule  # the backup path: not for every driver

            plan = dataclasses.replace(plan, locked_patience_s=schedule(settings).lock_ttl + 5)
        gen = workers[node].sweep.remote(env, share, plan)
        streams[gen] = _Stream(node, {d.id: d for d in share}, retried)

    for i, node in enumerate(nodes):
        share = devices[i::len(nodes)]
        if share:
            submit(node, share, False)
    results: list[dict] = []

    def deliver(result: dict) -> None:
        results.append(result)
        if on_result:
            on_result(result)

    while streams:
        ready, _ = ray.wait(list(streams), num_returns=1)
        for gen in ready:
            stream = streams[gen]
            try:
                batch = ray.get(next(gen))
            except StopIteration:
                del streams[gen]
                for device in stream.pending.values():  # never expected: each device answers
                    deliver(lost_result(device, RuntimeError("no result"), "worker ended early"))
                continue
            except errors.StaleWorker as exc:  # before any backup: replace it, no retry spent
                log.info("replacing the fleet worker on node %s: %s", stream.node[:8], exc)
                del streams[gen]
                ray.kill(workers[stream.node], no_restart=True)
                workers[stream.node] = _fresh_worker(stream.node)
                submit(stream.node, list(stream.pending.values()), stream.retried)
                continue
            except WORKER_LOST as exc:
                del streams[gen]
                share = list(stream.pending.values())
                if not stream.retried:
                    log.warning("fleet worker on node %s lost (%s); retrying its %d devices on a "
                                "fresh worker", stream.node[:8], type(exc).__name__, len(share))
                    workers[stream.node] = _restarted(workers[stream.node], stream.node)
                    submit(stream.node, share, True)
                else:
                    for device in share:
                        deliver(lost_result(device, exc, "worker lost twice (retried on a fresh worker)"))
                continue
            except Exception as exc:  # the worker's own bug: its devices failed, the rest go on
                del streams[gen]
                for device in stream.pending.values():
                    deliver(lost_result(device, exc, "worker failed"))
                continue
            for result in batch:
                stream.pending.pop(result["device_id"], None)
                deliver(result)
    return results


def _restarted(worker, node: str, patience_s: float = 60.0):
    """The lost worker once Ray has restarted it (calls to a restarting actor fail), or a
    new one if it is gone for good."""
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            ray.get(worker.info.remote(), timeout=10)
            return worker
        except ray.exceptions.ActorDiedError:
            return _fresh_worker(node)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(0.5)
    return worker  # its devices fail as lost twice


def _fresh_worker(node: str, patience_s: float = 30.0):
    """A new worker under the node's name once the killed one has let go of it."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            ray.get_actor(C.FLEET_WORKER_PREFIX + node, namespace=C.NAMESPACE)
        except ValueError:
            return options.fleet_worker(node)
        if time.monotonic() > deadline:
            raise RuntimeError(f"the old fleet worker on node {node[:8]} does not go away")
        time.sleep(0.1)


def lost_result(device: Device, exc: BaseException, what: str) -> dict:
    first_line = (str(exc).strip().splitlines() or [""])[0][:160]
    return BackupResult(
        device_id=device.id, status=C.STATUS_FAILED, error_kind=errors.UNKNOWN,
        error=f"{what}: {type(exc).__name__}: {first_line}".rstrip(": "),
    ).to_json()
