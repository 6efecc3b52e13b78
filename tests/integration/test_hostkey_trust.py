"""Trust on first use that pins: real SSH to the simulator, real YAML sidecars and PostgreSQL."""

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

from ray_backup import errors
from ray_backup.backup import Collector
from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.inventory.hostkeys import HostKeyFile
from ray_backup.inventory.postgres import PostgresInventory
from ray_backup.inventory.schema import add_device, init_db
from ray_backup.inventory.trust import InventoryHostKeys, VerifyNotes
from ray_backup.inventory.yamlfile import YamlInventory, hostkeys_path
from ray_backup.settings import Settings
from ray_backup.sinks.directory import DirectorySink
from ray_backup.transport.ssh import SSHOptions
from tests.integration.conftest import wait_for

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OTHER = "SHA256:" + "O" * 43


def collector(tmp_path, record, verified=None, settings=None) -> Collector:
    noted = {"host_key_verified": verified} if verified else {}
    return Collector(
        credentials=CredentialResolver(settings or Settings.load(environ={})),
        sink=DirectorySink(tmp_path / "out"),
        options=SSHOptions(connect_timeout=3, command_timeout=5, max_output_bytes=2**20),
        record_host_key=record,
        **noted,
    )


def published(tmp_path) -> list[dict]:
    path = tmp_path / "out" / "snapshots.jsonl"
    return [json.loads(line) for line in path.open()] if path.exists() else []


def test_a_first_key_that_could_not_be_stored_is_not_trusted(sim_fleet, tmp_path):
    sim, _, inventory = sim_fleet(1)
    source = YamlInventory(inventory)
    device = source.load().devices[0]

    def store_down(device_id, fingerprint):
        raise OSError("sidecar directory is read-only")

    result, known = collector(tmp_path, store_down).backup(device)
    assert (result.status, result.error_kind) == ("failed", errors.UNKNOWN), result
    assert "not stored" in result.error and "not trusted" in result.error
    assert known.host_key_fingerprint is None and published(tmp_path) == []
    # Not a block: the retry after the backoff pins the key and backs up.
    result, known = collector(tmp_path, source.record_host_key).backup(device)
    assert result.ok and known.host_key_fingerprint == sim.device(device.id).host_key_fingerprint
    assert source.load().devices[0].host_key_fingerprint == known.host_key_fingerprint


def test_losing_a_first_use_race_to_another_key_is_a_mismatch(sim_fleet, tmp_path):
    sim, _, inventory = sim_fleet(1)
    source = YamlInventory(inventory)
    device = source.load().devices[0]  # read while no key was stored
    HostKeyFile(hostkeys_path(inventory)).record(device.id, OTHER)  # another process won
    result, known = collector(tmp_path, source.record_host_key).backup(device)
    assert result.error_kind == errors.HOST_KEY_MISMATCH, result
    assert result.presented_fingerprint == sim.device(device.id).host_key_fingerprint
    assert known.host_key_fingerprint is None and published(tmp_path) == []
    assert source.load().devices[0].host_key_fingerprint == OTHER


def test_losing_a_first_use_race_to_the_same_key_is_fine(sim_fleet, tmp_path):
    sim, _, inventory = sim_fleet(1)
    source = YamlInventory(inventory)
    device = source.load().devices[0]
    HostKeyFile(hostkeys_path(inventory)).record(device.id, sim.device(device.id).host_key_fingerprint)
    result, _ = collector(tmp_path, source.record_host_key).backup(device)
    assert result.ok, result


@pytest.fixture
def pg_sim(sim_fleet, pg_url):
    """One simulated device as a row of the devices table (legacy credentials)."""
    sim, sims, _ = sim_fleet(1)
    init_db(pg_url)
    dev = sims[0]
    device_id = add_device(pg_url, dev.host or "127.0.0.1", dev.username, dev.password, KEY,
                           port=dev.port, id=dev.id, routeros_version=dev.routeros_version)
    settings = Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY})
    inventory = PostgresInventory(pg_url)
    yield sim, device_id, inventory, settings
    inventory.close()


def host_key_columns(url, device_id):
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT ssh_host_key_fingerprint, ssh_host_key_first_seen,"
                            " ssh_host_key_last_verified FROM devices WHERE id = %s",
                            (device_id,)).fetchone()


def test_postgres_first_writer_wins_and_the_loser_fails_mismatch(pg_sim, pg_url, tmp_path):
    sim, device_id, inventory, settings = pg_sim
    device = inventory.load().devices[0]
    assert device.host_key_fingerprint is None
    assert PostgresInventory(pg_url).record_host_key(device_id, OTHER) is True  # the winner
    result, _ = collector(tmp_path, inventory.record_host_key, settings=settings).backup(device)
    assert result.error_kind == errors.HOST_KEY_MISMATCH, result
    assert host_key_columns(pg_url, device_id)[0] == OTHER and published(tmp_path) == []


def test_a_verified_key_moves_last_verified_off_the_backup_path(pg_sim, pg_url, tmp_path):
    sim, device_id, inventory, settings = pg_sim
    keys = InventoryHostKeys(lambda: PostgresInventory(pg_url))
    notes = VerifyNotes(keys, every_s=600)
    backup = collector(tmp_path, keys.record, notes, settings).backup
    result, known = backup(inventory.load().devices[0])  # first use: stored and verified
    assert result.ok, result
    fp, first_seen, verified = host_key_columns(pg_url, device_id)
    assert fp == sim.device(device_id).host_key_fingerprint and verified == first_seen
    time.sleep(0.05)
    assert backup(known)[0].ok  # the stored key matched: noted in the background
    wait_for(lambda: host_key_columns(pg_url, device_id)[2] > verified, 10,
             message="last_verified to move")
    second = host_key_columns(pg_url, device_id)[2]
    assert backup(known)[0].ok  # within the period: no second write
    notes.close()
    keys.close()
    assert host_key_columns(pg_url, device_id)[2] == second


def test_host_key_writes_keep_no_database_connection_open(pg_sim, pg_url):
    """One device actor per device: a connection kept per actor would be one per device."""
    _, device_id, _, _ = pg_sim
    keys = InventoryHostKeys(lambda: PostgresInventory(pg_url))
    assert keys.record(device_id, OTHER) is True
    keys.verified(device_id, OTHER)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        open_ = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname ="
                             " current_database() AND application_name = 'ray-backup'").fetchone()
    assert open_[0] == 0


def test_a_verified_key_moves_last_verified_in_the_yaml_sidecar(sim_fleet, tmp_path):
    sim, _, inventory = sim_fleet(1)
    keys = InventoryHostKeys(lambda: YamlInventory(inventory))
    notes = VerifyNotes(keys)
    result, known = collector(tmp_path, keys.record, notes).backup(YamlInventory(inventory).load().devices[0])
    first = json.loads(hostkeys_path(inventory).read_text())[known.id]["last_verified"]
    time.sleep(0.01)
    assert result.ok and collector(tmp_path, keys.record, notes).backup(known)[0].ok
    notes.close()
    assert json.loads(hostkeys_path(inventory).read_text())[known.id]["last_verified"] > first


def ray_backup_cli(*argv, env=None):
    environ = {**os.environ, "RAY_ADDRESS": "local", "REDIS_URL": "", "DATABASE_URL": "",
               "RAY_BACKUP_INVENTORY": "", "RAY_BACKUP_CONFIG": "", **(env or {})}
    return subprocess.run([str(Path(sys.executable).parent / "ray-backup"), *argv],
                          env=environ, capture_output=True, text=True, timeout=120)


def test_cli_accept_and_reset_on_postgres_without_a_job(pg_sim, pg_url):
    sim, device_id, inventory, settings = pg_sim
    inventory.record_host_key(device_id, OTHER)
    real = sim.device(device_id).host_key_fingerprint
    env = {"DATABASE_URL": pg_url}
    done = ray_backup_cli("hostkey", "accept", device_id, "--fingerprint", real, env=env)
    assert done.returncode == 0, done.stderr
    fp, first_seen, verified = host_key_columns(pg_url, device_id)
    assert (fp, verified) == (real, None) and first_seen is not None
    done = ray_backup_cli("hostkey", "reset", device_id, env=env)
    assert done.returncode == 0 and "next backup trusts" in done.stdout, done.stderr
    assert host_key_columns(pg_url, device_id) == (None, None, None)
    unknown = "3c2b1a00-9999-4aaa-8bbb-cccccccccccc"
    done = ray_backup_cli("hostkey", "reset", unknown, env=env)
    assert done.returncode == 2 and f"device {unknown} is not in the devices table" in done.stderr
    done = ray_backup_cli("hostkey", "accept", device_id, "--fingerprint", "SHA256:x", env=env)
    assert done.returncode == 2 and "--fingerprint must look like" in done.stderr


def test_cli_reports_an_unreachable_database_as_failed(pg_sim):
    _, device_id, _, _ = pg_sim
    env = {"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"}
    done = ray_backup_cli("hostkey", "reset", device_id, env=env)
    assert done.returncode == 1 and "inventory not written" in done.stderr, done.stderr
