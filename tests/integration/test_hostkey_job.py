"""`ray-backup hostkey accept/reset` against a running job on a local Ray (YAML and PostgreSQL).

The job re-reads its inventory only every 10 minutes here, so a device that backs up
again within seconds was unblocked by the command telling the supervisor.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import ray

from ray_backup import constants as C
from ray_backup import job
from ray_backup.coordination.redis import RedisCoordinator
from ray_backup.inventory.schema import add_device, init_db
from ray_backup.inventory.yamlfile import hostkeys_path
from tests.integration.conftest import job_env, own_local_ray, settings_from, wait_for

pytestmark = pytest.mark.timeout(600)

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
REFRESH_S = "600"


@pytest.fixture(scope="module")
def ray_address():
    with own_local_ray("rbh") as address:
        yield address


@pytest.fixture
def running(ray_address):
    """job.start(env) -> supervisor; the job is stopped after the test."""
    started = []

    def start(env):
        started.append(job.start(settings_from(env), env))
        return started[-1]

    yield start
    if started:
        job.stop_all(grace_s=5)


def hostkey(ray_address, *argv, **env):
    environ = {**os.environ, "RAY_ADDRESS": ray_address, "REDIS_URL": "", "DATABASE_URL": "",
               "RAY_BACKUP_INVENTORY": "", "RAY_BACKUP_CONFIG": "", **env}
    return subprocess.run([str(Path(sys.executable).parent / "ray-backup"), "hostkey", *argv],
                          env=environ, capture_output=True, text=True, timeout=180)


def row(supervisor, device_id) -> dict:
    rows = ray.get(supervisor.status.remote(), timeout=30)
    return next((r for r in rows if r["device_id"] == device_id), {})


def succeeded_since(supervisor, device_id, since):
    return (row(supervisor, device_id).get("last_success_at") or 0) > since


def mismatch(supervisor, sim, device_id) -> str:
    """Give the device a new host key; its next backup is a mismatch. Returns the new key."""
    sim.device(device_id).rotate_host_key()
    new = sim.device(device_id).host_key_fingerprint
    result = ray.get(supervisor.trigger.remote(device_id), timeout=60)
    assert result["error_kind"] == "host_key_mismatch", result
    assert row(supervisor, device_id)["status"] == C.STATUS_HOSTKEY_BLOCKED
    return new


def test_yaml_accept_and_reset_with_and_without_a_running_job(
        ray_address, running, sim_fleet, redis_url, redis_prefix, tmp_path):
    sim, sims, inventory = sim_fleet(2)
    victim, other = sims[0].id, sims[1].id
    env = job_env(redis_url, redis_prefix, inventory, tmp_path / "out", DEVICE_REFRESH_SECONDS=REFRESH_S)
    cli_env = {"REDIS_URL": redis_url, "RAY_BACKUP_REDIS_PREFIX": redis_prefix}
    # A cluster without a job: the sidecar is written, nobody to tell.
    done = hostkey(ray_address, "reset", victim, "--inventory", str(inventory), **cli_env)
    assert done.returncode == 0 and "no running job" in done.stdout, done.stderr

    supervisor = running(env)
    wait_for(lambda: all(succeeded_since(supervisor, i, 0) for i in (victim, other)), 90,
             message="first backups")
    # First use through the supervisor, the sidecar's one writer.
    stored = {k: v["fingerprint"] for k, v in json.loads(hostkeys_path(inventory).read_text()).items()}
    assert stored == {d.id: sim.device(d.id).host_key_fingerprint for d in sims}

    new = mismatch(supervisor, sim, victim)
    state = RedisCoordinator(redis_url, redis_prefix).load_state(victim)
    assert state.presented_fingerprint == new
    told = time.time()
    done = hostkey(ray_address, "accept", victim, "--inventory", str(inventory), **cli_env)
    assert done.returncode == 0, done.stderr
    assert new in done.stdout and "re-read the inventory" in done.stdout
    assert json.loads(hostkeys_path(inventory).read_text())[victim]["fingerprint"] == new
    wait_for(lambda: succeeded_since(supervisor, victim, told), 60,
             message="the accepted device to back up without waiting for a reconcile")

    done = hostkey(ray_address, "reset", victim, "--inventory", str(inventory), **cli_env)
    assert done.returncode == 0 and "re-read the inventory" in done.stdout, done.stderr
    assert victim not in json.loads(hostkeys_path(inventory).read_text())
    # The actor has the keyless row: its next backup trusts the key again, via the supervisor.
    assert ray.get(supervisor.trigger.remote(victim), timeout=60)["status"] == "success"
    assert json.loads(hostkeys_path(inventory).read_text())[victim]["fingerprint"] == new


def host_key_columns(url, device_id):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT ssh_host_key_fingerprint, ssh_host_key_last_verified"
                            " FROM devices WHERE id = %s", (device_id,)).fetchone()


def test_postgres_accept_and_reset_with_a_running_job(
        ray_address, running, sim_fleet, pg_url, redis_url, redis_prefix, tmp_path):
    sim, sims, _ = sim_fleet(1)
    dev = sims[0]
    init_db(pg_url)
    device_id = add_device(pg_url, dev.host or "127.0.0.1", dev.username, dev.password, KEY,
                           port=dev.port, id=dev.id, routeros_version=dev.routeros_version)
    env = job_env(redis_url, redis_prefix, "", tmp_path / "out", DEVICE_REFRESH_SECONDS=REFRESH_S,
                  DATABASE_URL=pg_url, CREDENTIAL_ENCRYPTION_KEY=KEY)
    supervisor = running(env)
    wait_for(lambda: succeeded_since(supervisor, device_id, 0), 90, message="the first backup")
    assert host_key_columns(pg_url, device_id)[0] == dev.host_key_fingerprint

    new = mismatch(supervisor, sim, device_id)
    told = time.time()
    # No REDIS_URL here: the presented key comes from the running job's status.
    done = hostkey(ray_address, "accept", device_id, DATABASE_URL=pg_url)
    assert new in done.stdout, (done.stdout, done.stderr)
    assert done.returncode == 0 and "re-read the inventory" in done.stdout, done.stderr
    wait_for(lambda: succeeded_since(supervisor, device_id, told), 60,
             message="the accepted device to back up without waiting for a reconcile")
    # The accepted key was then verified by that backup.
    wait_for(lambda: host_key_columns(pg_url, device_id)[1] is not None, 30,
             message="last_verified after the accepted key's first backup")
    assert host_key_columns(pg_url, device_id)[0] == new

    done = hostkey(ray_address, "reset", device_id, DATABASE_URL=pg_url)
    assert done.returncode == 0 and "re-read the inventory" in done.stdout, done.stderr
    assert ray.get(supervisor.trigger.remote(device_id), timeout=60)["status"] == "success"
    assert host_key_columns(pg_url, device_id)[0] == new  # trusted again on first use
