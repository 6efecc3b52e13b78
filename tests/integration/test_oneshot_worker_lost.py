"""A one-shot fleet backup whose worker process dies mid-sweep, on a real local Ray."""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest

from ray_backup import oneshot
from ray_backup.inventory.yamlfile import YamlInventory
from tests.integration.conftest import own_local_ray, settings_from, wait_for

pytestmark = pytest.mark.timeout(300)

SLOW_S = 8.0  # long enough to kill the worker while it waits on these devices


@pytest.fixture(scope="module")
def local_ray():
    with own_local_ray("rbo") as address:
        yield address


def _fleet_worker_pids() -> list[int]:
    """This test's FleetWorker processes (Ray names the process after the actor class)."""
    pids = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "FleetWorker" in " ".join(proc.cmdline()):
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


@pytest.mark.parametrize("coordination", ["local", "redis"])
def test_a_worker_killed_mid_sweep_loses_no_device(local_ray, sim_fleet, tmp_path, request,
                                                   coordination):
    """With Redis, the killed worker's device locks outlive it (TTL: command timeout + 30 s):
    the retry waits them out instead of reporting the devices `locked`."""
    sim, sims, inventory = sim_fleet(5)
    slow = [d.id for d in sims[:2]]
    for device_id in slow:
        sim.device(device_id).delay = SLOW_S
    env = {
        "RAY_BACKUP_INVENTORY": str(inventory), "RAY_BACKUP_OUTPUT_DIR": str(tmp_path / "out"),
        "CONFIG_BACKUP_COMMAND_TIMEOUT": "12", "CONFIG_BACKUP_CONNECT_TIMEOUT": "10",
        "REDIS_URL": "", "KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "", "RAY_BACKUP_CONFIG": "",
    }
    if coordination == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
        env["RAY_BACKUP_REDIS_PREFIX"] = request.getfixturevalue("redis_prefix")
    devices = YamlInventory(inventory).load().devices
    results: list[dict] = []
    sweep = threading.Thread(
        target=lambda: results.extend(oneshot.backup_fleet(settings_from(env), devices, env))
    )
    sweep.start()
    # Both slow devices are inside their export: the worker is busy with them.
    wait_for(lambda: sim.stats.active_commands >= 2, 120, message="the slow exports to start")
    pids = _fleet_worker_pids()
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)
    sweep.join(timeout=180)
    assert not sweep.is_alive()

    by_id = {r["device_id"]: r for r in results}
    assert sorted(by_id) == sorted(d.id for d in devices) and len(results) == len(devices)
    for result in by_id.values():
        assert result["status"] == "success", result
        assert len(result["sha256_hash"]) == 64
    # The slow devices were asked twice: by the killed worker, then by its successor.
    assert sim.stats.commands >= len(devices) + len(slow), sim.stats
    assert not _fleet_worker_pids() or wait_for(lambda: not _fleet_worker_pids(), 30,
                                                message="the workers to be gone")
