"""The SSH cap holds when Ray restarts the semaphore actor while permits are held (issue 9, 4a).

A local Ray of its own (2 CPUs, 100 MB object store), shut down after the module.
"""

from __future__ import annotations

import os

import pytest
import ray

from ray_backup import constants as C
from ray_backup.actors import options
from tests.integration.conftest import own_local_ray, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def local_ray():
    with own_local_ray("rbs"):
        yield


@pytest.fixture
def job_semaphore(local_ray):
    """Factory: the job's semaphore actor (limit 2) with these settings; killed after."""
    made = []

    def make(**env):
        env = {"RAY_BACKUP_CONFIG": "", **env}
        made.append(options.semaphore(2, 0.0, env))
        return made[-1]

    yield make
    for handle in made:
        ray.kill(handle, no_restart=True)
    wait_for(lambda: _gone(C.SEMAPHORE_NAME), 30, "the semaphore's name to be free")


def _gone(name):
    try:
        ray.get_actor(name, namespace=C.NAMESPACE)
    except ValueError:
        return True
    return False


def _pid(sem):
    return ray.get(sem.__ray_call__.remote(lambda self: os.getpid()), timeout=10)


def _restart(sem):
    """Kill the actor's process; Ray restarts it (max_restarts=-1) with an empty memory."""
    before = _pid(sem)
    ray.kill(sem, no_restart=False)

    def restarted():
        try:
            return _pid(sem) != before and ray.get(sem.stats.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None

    return wait_for(restarted, 60, "the restarted semaphore")


def test_restarted_semaphore_keeps_the_leases_held_in_redis(job_semaphore, redis_url,
                                                            redis_prefix):
    sem = job_semaphore(REDIS_URL=redis_url, RAY_BACKUP_REDIS_PREFIX=redis_prefix)
    a = ray.get(sem.acquire.remote("device-a", 120))
    b = ray.get(sem.acquire.remote("device-b", 120))
    stats = _restart(sem)
    assert stats["held"] == 2 and stats["holders"] == ["device-a", "device-b"]
    third = sem.acquire.remote("device-c", 120)
    ready, _ = ray.wait([third], timeout=3)
    assert not ready  # both holders are still logged in: the cap of 2 holds
    assert ray.get(sem.release.remote(a, "device-b")) is False  # checked against its holder
    assert ray.get(sem.release.remote(a, "device-a")) is True
    c = ray.get(third, timeout=10)
    assert c not in (a, b)
    assert ray.get(sem.stats.remote())["held"] == 2


def test_restarted_semaphore_without_redis_grants_nothing_until_leases_ran_out(job_semaphore):
    sem = job_semaphore(REDIS_URL="", CONFIG_BACKUP_CONNECT_TIMEOUT="1",
                        CONFIG_BACKUP_COMMAND_TIMEOUT="1")
    ray.get([sem.acquire.remote("device-a", 120), sem.acquire.remote("device-b", 120)])
    stats = _restart(sem)
    assert stats["held"] == 0  # forgotten ...
    assert stats["holding_after_restart_s"] > 30  # ... so nothing new for the longest lease
    ready, _ = ray.wait([sem.acquire.remote("device-c", 120)], timeout=3)
    assert not ready
