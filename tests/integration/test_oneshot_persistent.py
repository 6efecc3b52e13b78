"""One-shot sweeps on persistent fleet workers, on a real local Ray: reuse, streaming,
removal by `ray-backup stop`, and the SSH cap through a running job's semaphore."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from ray_backup import constants as C
from ray_backup import oneshot
from ray_backup.actors import options
from ray_backup.inventory.yamlfile import YamlInventory
from tests.integration.conftest import own_local_ray, settings_from, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def local_ray():
    with own_local_ray("rbp") as address:
        yield address


def _env(inventory, tmp_path, **extra) -> dict[str, str]:
    return {"RAY_BACKUP_INVENTORY": str(inventory), "RAY_BACKUP_OUTPUT_DIR": str(tmp_path / "out"),
            "CONFIG_BACKUP_COMMAND_TIMEOUT": "20", "CONFIG_BACKUP_CONNECT_TIMEOUT": "10",
            "REDIS_URL": "", "KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "",
            "RAY_BACKUP_CONFIG": "", **extra}


def _workers() -> dict[str, dict]:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == C.NAMESPACE and a["name"].startswith(C.FLEET_WORKER_PREFIX)]
    return {n: ray.get(ray.get_actor(n, namespace=C.NAMESPACE).info.remote()) for n in names}


def test_a_second_sweep_reuses_the_workers_and_ray_backup_stop_removes_them(
        local_ray, sim_fleet, tmp_path):
    sim, sims, inventory = sim_fleet(4)
    env = _env(inventory, tmp_path)
    devices = YamlInventory(inventory).load().devices
    first = oneshot.backup_fleet(settings_from(env), devices, env)
    before = _workers()
    assert len(before) == 1 and next(iter(before)).endswith(oneshot.alive_nodes()[0])
    second = oneshot.backup_fleet(settings_from({**env, "RAY_BACKUP_OUTPUT_DIR": str(tmp_path / "o2")}),
                                  devices, {**env, "RAY_BACKUP_OUTPUT_DIR": str(tmp_path / "o2")})
    after = _workers()
    assert [r["status"] for r in first + second] == ["success"] * 8
    assert sorted(p.stem for p in (tmp_path / "o2").glob("*.rsc")) == sorted(d.id for d in devices)
    (name, info), = after.items()
    assert info["pid"] == before[name]["pid"] and info["sweeps"] == before[name]["sweeps"] + 1

    done = subprocess.run([str(Path(sys.executable).parent / "ray-backup"), "stop"],
                          env={**os.environ, "RAY_ADDRESS": local_ray}, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 one-shot fleet workers removed" in done.stdout
    wait_for(lambda: not _workers(), 30, message="the fleet workers to be gone")
    # The next sweep creates a worker again.
    assert [r["status"] for r in oneshot.backup_fleet(settings_from(env), devices[:1], env)] == ["success"]


def test_results_stream_back_before_the_slowest_device_finishes(local_ray, sim_fleet, tmp_path):
    sim, sims, inventory = sim_fleet(5)
    slow = sims[0].id
    sim.device(slow).delay = 6.0
    env = _env(inventory, tmp_path)
    devices = YamlInventory(inventory).load().devices
    oneshot.backup_fleet(settings_from(env), devices[1:2], env)  # the worker exists
    seen: list[tuple[str, float, int]] = []
    started = time.monotonic()
    results = oneshot.backup_fleet(
        settings_from(env), devices, env,
        on_result=lambda r: seen.append((r["device_id"], time.monotonic() - started,
                                         sim.stats.active_commands)))
    assert len(results) == 5 and all(r["status"] == "success" for r in results)
    assert seen[-1][0] == slow
    # Each fast result came while the slow device was still inside its export.
    assert all(active >= 1 for device_id, _, active in seen[:-1])
    assert seen[0][1] < seen[-1][1]


def test_the_running_jobs_cap_holds_with_batched_permits(local_ray, sim_fleet, tmp_path):
    sim, sims, inventory = sim_fleet(16)
    for device in sims:
        sim.device(device.id).delay = 0.3
    env = _env(inventory, tmp_path, CONFIG_BACKUP_MAX_CONCURRENT="3")
    semaphore = options.semaphore(3, 0.0)  # the job's semaphore, as `ray-backup run` makes it
    try:
        ray.get(semaphore.reset_peak.remote())
        devices = YamlInventory(inventory).load().devices
        results = oneshot.backup_fleet(settings_from({**env, "CONFIG_BACKUP_MAX_CONCURRENT": "8"}),
                                       devices, env)
        stats = ray.get(semaphore.stats.remote())
    finally:
        ray.kill(semaphore, no_restart=True)
        oneshot.remove_workers()
    assert [r["status"] for r in results] == ["success"] * 16
    assert stats["peak_held"] <= 3 and stats["held"] == 0, stats
    assert sim.stats.peak_active_commands <= 3
    # Permits were reused by the worker: fewer grants than backups.
    assert stats["granted_total"] < 16, stats
