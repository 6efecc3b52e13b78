"""The one place where Ray options are applied to the plain actor classes."""

from __future__ import annotations

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_backup import constants as C
from ray_backup.models import Device

# Actors wait on the network, not the CPU: they reserve none, so a node's CPU
# count does not cap how many devices it hosts. Detached, so that they outlive
# a supervisor restart and can be re-adopted; restarted by Ray when they die.
_COMMON = dict(namespace=C.NAMESPACE, lifetime="detached", num_cpus=0, max_restarts=-1)


def semaphore(limit: int, logins_per_second: float, env_vars: dict[str, str] | None = None):
    from ray_backup.actors.semaphore import SSHSemaphore

    return (
        ray.remote(SSHSemaphore)
        .options(name=C.SEMAPHORE_NAME, get_if_exists=True, max_concurrency=100_000,
                 runtime_env=_runtime_env(env_vars), **_COMMON)
        .remote(limit, logins_per_second, persist=True)
    )


def supervisor(env_vars: dict[str, str] | None = None, node_id: str | None = None):
    from ray_backup.actors.supervisor import BackupSupervisor  # it imports this module

    # Soft: if that node goes, Ray restarts the supervisor on another one.
    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=True) if node_id else None
    return (
        ray.remote(BackupSupervisor)
        .options(name=C.SUPERVISOR_NAME, get_if_exists=True, max_concurrency=10_000,
                 runtime_env=_runtime_env(env_vars), scheduling_strategy=strategy, **_COMMON)
        .remote()
    )


def device_actor(name: str, devices: list[Device], node_id: str | None):
    # Hard affinity: soft affinity spills to other nodes while a node starts its
    # workers, which unbalances the fleet. If the node dies, Ray cannot restart
    # the actor there and reports it unschedulable; the supervisor then creates
    # it again on a live node.
    from ray_backup.actors.device import DeviceBackupActor  # the backup path: only when needed

    strategy = (
        NodeAffinitySchedulingStrategy(node_id=node_id, soft=False) if node_id else "SPREAD"
    )
    return (
        ray.remote(DeviceBackupActor)
        .options(name=name, get_if_exists=True, max_concurrency=10_000,
                 scheduling_strategy=strategy, **_COMMON)
        .remote(name, devices)
    )


def _runtime_env(env_vars: dict[str, str] | None) -> dict | None:
    return {"env_vars": dict(env_vars)} if env_vars else None


def fleet_worker(node_id: str):
    """The node's persistent one-shot worker, created if there is none.

    Named and detached so that later sweeps (and notebooks) reuse it; no runtime_env, so
    Ray can start it from an idle worker process; each sweep brings its own settings.
    Restarted by Ray when it dies (a sweep retries that worker's devices on the new one);
    ``ray-backup stop`` removes it for good.
    """
    from ray_backup.actors.worker import FleetWorker

    return (
        ray.remote(FleetWorker)
        .options(name=C.FLEET_WORKER_PREFIX + node_id, get_if_exists=True, namespace=C.NAMESPACE,
                 lifetime="detached", num_cpus=0, max_restarts=-1, max_concurrency=10_000,
                 scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=True))
        .remote()
    )


def temporary_semaphore(name: str, limit: int, logins_per_second: float):
    """A semaphore for one one-shot backup when no job is running; dies with the driver."""
    from ray_backup.actors.semaphore import SSHSemaphore

    return (
        ray.remote(SSHSemaphore)
        .options(name=name, namespace=C.NAMESPACE, num_cpus=0, max_concurrency=100_000)
        .remote(limit, logins_per_second)
    )


def history_writer(name: str, env_vars: dict[str, str] | None = None, node_id: str | None = None):
    """One history writer. ``node_id`` pins it (hard) to the node whose disk holds the output
    directory; without it, writers spread over the nodes. Restarted by Ray when it dies:
    its uncommitted message is delivered again and found a duplicate."""
    from ray_backup.actors.history_writer import HistoryWriter

    strategy = (
        NodeAffinitySchedulingStrategy(node_id=node_id, soft=False) if node_id else "SPREAD"
    )
    # A few threads: stats() and stop() are answered while the consume loop runs.
    return (
        ray.remote(HistoryWriter)
        .options(name=name, get_if_exists=True, max_concurrency=4,
                 runtime_env=_runtime_env(env_vars), scheduling_strategy=strategy, **_COMMON)
        .remote(name)
    )
