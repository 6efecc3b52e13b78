"""The job's start-up, its driver and the orphan watchdog, on a small local Ray.

Leases are short here (seconds) so that the watchdog decides within a test; the
driver is either this test, beating as ``job.run`` does, or a real ``ray-backup run``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

from ray_backup import constants as C
from ray_backup import job
from ray_backup.settings import Settings
from ray_backup.simulator import write_inventory_yaml
from tests.integration.conftest import wait_for
from tests.reliability import test_job_faults as faults
from tests.reliability.test_job_faults import env_for, status

# One Ray for this module, and the simulator fixture, as in test_job_faults.
local_ray = faults.local_ray
simulator = faults.simulator

pytestmark = pytest.mark.timeout(300)

LEASE_S = 4.0
HEARTBEAT_S = 2.0


@pytest.fixture
def clean_up(local_ray):
    yield
    job.stop_all(grace_s=5)
    assert not named(), "actors left behind"


def start_job(simulator, tmp_path, n: int):
    """A simulated fleet of ``n`` and the job over it (service mode: no lease yet)."""
    sim = simulator(n)
    path = write_inventory_yaml(tmp_path / "fleet.yaml", sim.devices)
    env = env_for(tmp_path, RAY_BACKUP_INVENTORY=path)
    return sim, path, job.start(Settings.load(environ=env), env)


def named(prefix: str = "") -> list[str]:
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                  if a.get("namespace") == C.NAMESPACE and a["name"].startswith(prefix))


def test_a_first_reconcile_longer_than_the_lease_does_not_stop_the_fleet(
        clean_up, simulator, tmp_path, monkeypatch):
    # The failure: 60 one-per-device actors took ~50 s to start against a 30 s
    # lease, and the fleet stopped itself right after start-up. Here the first inventory
    # read is held (a FIFO) for three leases, which makes the first reconcile as slow.
    sim = simulator(2)
    real = write_inventory_yaml(tmp_path / "real.yaml", sim.devices)
    inventory = tmp_path / "fleet.yaml"
    os.mkfifo(inventory)

    def feed():
        time.sleep(3 * LEASE_S)
        with open(inventory, "w") as fifo:  # blocks until the supervisor reads
            fifo.write(real.read_text())
        os.replace(real, inventory)  # later reads (and password look-ups) find a file

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    env = env_for(tmp_path, RAY_BACKUP_INVENTORY=inventory)
    # As `job.run` outside service mode: start() carries the lease, then heartbeats follow.
    monkeypatch.setattr(job, "DRIVER_LEASE_S", LEASE_S)
    supervisor = job.start(Settings.load(environ=env), env, service=False)
    feeder.join(60)
    ids = [d.id for d in sim.devices]
    for _ in range(int(4 * LEASE_S / HEARTBEAT_S)):
        time.sleep(HEARTBEAT_S)
        assert named(C.SUPERVISOR_NAME), "the fleet stopped itself after a slow start-up"
        supervisor.heartbeat.remote(LEASE_S)
    wait_for(lambda: all((status(supervisor).get(i) or {}).get("last_success_at") for i in ids),
             60, "first backups")
    assert len(named(C.DEVICE_ACTOR_PREFIX)) == 2


def test_a_driver_whose_supervisor_is_gone_says_so_and_exits_non_zero(
        clean_up, local_ray, simulator, tmp_path):
    _, address = local_ray
    sim = simulator(1)
    path = write_inventory_yaml(tmp_path / "fleet.yaml", sim.devices)
    cli = str(Path(sys.executable).parent / "ray-backup")
    env = {**os.environ, **env_for(tmp_path), "RAY_ADDRESS": address}
    driver = subprocess.Popen([cli, "run", "--inventory", str(path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(driver.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("job running" in line for line in lines), 120, "the driver running")
        ray.kill(job.running_supervisor(), no_restart=True)  # gone for good, not restarting
        driver.wait(timeout=60)
    except subprocess.TimeoutExpired:
        driver.kill()
        raise AssertionError("the driver hangs with no supervisor:\n" + "".join(lines[-20:])) from None
    finally:
        reader.join(10)
    out = "".join(lines)
    assert driver.returncode == 1, out[-2000:]
    assert "the supervisor is gone" in out, out[-2000:]
    wait_for(lambda: not named(), 30, "the rest of the job stopped")


def test_a_supervisor_shut_down_by_a_driver_that_then_died_stops_itself(
        clean_up, simulator, tmp_path):
    # `ray job stop` gave up on the driver after stop_all's first step (the supervisor's
    # shutdown) and before it removed the supervisor and the semaphore.
    _, _, supervisor = start_job(simulator, tmp_path, 1)
    ray.get(supervisor.start.remote(LEASE_S))  # the driver's lease
    ray.get(supervisor.shutdown.remote(2), timeout=60)
    wait_for(lambda: not named(), 10 * LEASE_S, "supervisor and semaphore gone")


def test_a_later_start_restarts_a_supervisor_left_without_its_reconcile_loop(
        clean_up, simulator, tmp_path):
    # The same race in service mode (no lease): the next `ray-backup run` must bring the
    # fleet back, not find a supervisor that never reconciles again.
    sim, path, supervisor = start_job(simulator, tmp_path, 2)
    wait_for(lambda: len(named(C.DEVICE_ACTOR_PREFIX)) == 2, 60, "device actors")
    assert ray.get(supervisor.shutdown.remote(2), timeout=60) == 2
    assert not named(C.DEVICE_ACTOR_PREFIX)
    env = env_for(tmp_path, RAY_BACKUP_INVENTORY=path)
    supervisor = job.start(Settings.load(environ=env), env)
    wait_for(lambda: len(named(C.DEVICE_ACTOR_PREFIX)) == 2, 30, "device actors again")
    for device in sim.devices:
        assert ray.get(supervisor.trigger.remote(device.id))["status"] == C.STATUS_SUCCESS
    write_inventory_yaml(path, sim.devices[:1])
    wait_for(lambda: len(named(C.DEVICE_ACTOR_PREFIX)) == 1, 30, "reconciling again")
