"""Fixtures for tests that need the simulator and a real (multi-node) Ray."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from contextlib import contextmanager

import pytest

from ray_backup.simulator.fleet import make_fleet, write_inventory_yaml
from ray_backup.simulator.server import Simulator


@pytest.fixture
def sim_fleet(tmp_path):
    """Factory: start a simulated fleet, write its YAML inventory; stopped after the test."""
    started = []

    def factory(n=4, inventory="devices.yaml", seed=None, **kwargs):
        seed = seed if seed is not None else uuid.uuid4().int % 10**9
        devices = make_fleet(n, seed=seed, **kwargs)
        sim = Simulator(devices).start()
        started.append(sim)
        path = write_inventory_yaml(tmp_path / inventory, devices)
        return sim, devices, path

    yield factory
    for sim in started:
        sim.stop()


def wait_for(predicate, timeout=60.0, message="condition", *, interval=0.5):
    """Poll ``predicate`` until it returns a truthy value; fail with ``message`` on timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {message} (last: {last!r})")


def job_env(redis_url: str, redis_prefix: str, inventory, output, **extra) -> dict[str, str]:
    """Settings for the job's actors: fast schedule, this test's Redis prefix."""
    env = {
        "REDIS_URL": redis_url,
        "RAY_BACKUP_REDIS_PREFIX": redis_prefix,
        "RAY_BACKUP_INVENTORY": str(inventory),
        "RAY_BACKUP_OUTPUT_DIR": str(output),
        "CONFIG_BACKUP_INTERVAL": "3600",
        "CONFIG_BACKUP_JITTER_MIN": "0",
        "CONFIG_BACKUP_JITTER_MAX": "1",
        "CONFIG_BACKUP_COMMAND_TIMEOUT": "5",
        "CONFIG_BACKUP_CONNECT_TIMEOUT": "3",
        "DEVICE_REFRESH_SECONDS": "2",
        "RAY_BACKUP_METRICS_PORT": "0",
        "RAY_BACKUP_SPOOL_DIR": str(output) + "-spool",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def settings_from(env: dict[str, str]):
    from ray_backup.settings import Settings

    return Settings.load(environ={**os.environ, **env})


@contextmanager
def own_local_ray(prefix: str = "rb"):
    """A small Ray of this test module's own (address="local"), even where another one runs
    on this machine; yields its GCS address for subprocesses (RAY_ADDRESS)."""
    import ray

    from ray_backup import constants as C

    assert not ray.is_initialized()
    ray_tmp = tempfile.mkdtemp(prefix=prefix)  # short: unix socket paths live under it
    ray.init(address="local", namespace=C.NAMESPACE, num_cpus=2, include_dashboard=False,
             object_store_memory=80 * 1024**2, _temp_dir=ray_tmp)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
