"""The backup pipeline for one device over real SSH to the simulator: every error kind."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from ray_backup import errors
from ray_backup.backup import Collector
from ray_backup.credentials.legacy import encrypt_credentials
from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.models import CredentialRef, Device
from ray_backup.settings import Settings
from ray_backup.sinks.directory import DirectorySink
from ray_backup.transport.ssh import SSHOptions

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes


class FailingSink:
    def publish(self, snapshot):
        raise OSError("disk full")


@pytest.fixture
def collect(tmp_path):
    """Back up one device of a simulated fleet with the real Collector."""

    def run(device: Device, sink=None, options=None, settings=None, inventory=None):
        settings = settings or Settings.load(environ={})
        trusted = []

        def record(device_id, fingerprint):
            trusted.append(fingerprint)
            return inventory is None or inventory.record_host_key(device_id, fingerprint)

        collector = Collector(
            credentials=CredentialResolver(settings),
            sink=sink or DirectorySink(tmp_path / "out"),
            options=options or SSHOptions(connect_timeout=2, command_timeout=3, max_output_bytes=2**20),
            record_host_key=record,
        )
        result, known = collector.backup(device)
        return result, known, trusted

    return run


def _devices(path):
    return {d.id: d for d in YamlInventory(path).load().devices}


def test_healthy_v6_and_v7_devices_back_up_and_trust_their_host_key(sim_fleet, collect, tmp_path):
    sim, sims, inventory = sim_fleet(2, versions=("7.16", "6.49.10"))
    source = YamlInventory(inventory)
    for device in source.load().devices:
        result, known, trusted = collect(device, inventory=source)
        assert result.ok, result
        assert trusted == [sim.device(device.id).host_key_fingerprint]
        assert known.host_key_fingerprint == trusted[0]
    events = [json.loads(line) for line in (tmp_path / "out" / "snapshots.jsonl").open()]
    assert {e["routeros_version"] for e in events} == {"7.16", "6.49.10"}
    assert all(sim.device(e["device_id"]).secret in e["config_text"] for e in events)
    # The stored key is used next time: a second backup trusts nothing new.
    again = _devices(inventory)
    result, _, trusted = collect(next(iter(again.values())))
    assert result.ok and trusted == []


def test_unknown_version_is_found_out_not_guessed(sim_fleet, collect, tmp_path):
    sim, sims, inventory = sim_fleet(2, versions=("6.49.10", "7.18.2"))
    for device in _devices(inventory).values():
        unversioned = Device(**{**device.__dict__, "routeros_version": None})
        result, known, _ = collect(unversioned)
        assert result.ok, result
        assert known.routeros_version == sim.device(device.id).routeros_version


def test_unchanged_config_hashes_the_same_and_a_change_does_not(sim_fleet, collect):
    sim, sims, inventory = sim_fleet(1)
    device = next(iter(_devices(inventory).values()))
    first, _, _ = collect(device)
    second, _, _ = collect(device)
    sim.device(device.id).mutate()
    third, _, _ = collect(device)
    assert first.sha256_hash == second.sha256_hash != third.sha256_hash


@pytest.mark.parametrize(
    "fault, kind",
    [
        ("wrong_password", errors.AUTH_FAILED),
        ("stall", errors.TIMEOUT),
        ("silent", errors.TIMEOUT),
        ("disconnect", errors.TRUNCATED_OUTPUT),
        ("huge", errors.TRUNCATED_OUTPUT),
        ("refuse", errors.CONNECTION_REFUSED),
        ("empty", errors.INVALID_OUTPUT),
        ("non_config", errors.INVALID_OUTPUT),
        ("garbage", errors.INVALID_OUTPUT),
    ],
)
def test_each_device_fault_is_classified(sim_fleet, collect, fault, kind):
    sim, sims, inventory = sim_fleet(1, faults={fault: 1})
    device = next(iter(_devices(inventory).values()))
    result, _, _ = collect(device)
    assert (result.status, result.error_kind) == ("failed", kind), result
    assert result.duration_s < 10  # bounded by the timeouts, whatever the device does
    assert sim.device(device.id).password not in (result.error or "")


def test_changed_host_key_is_a_mismatch_and_no_password_is_sent(sim_fleet, collect):
    sim, sims, inventory = sim_fleet(1)
    source = YamlInventory(inventory)
    device = source.load().devices[0]
    assert collect(device, inventory=source)[0].ok
    auth_before = sim.stats.auth_failures
    sim.device(device.id).rotate_host_key()
    result, _, _ = collect(source.load().devices[0])
    assert result.error_kind == errors.HOST_KEY_MISMATCH
    assert "stored SHA256:" in result.error
    assert result.presented_fingerprint == sim.device(device.id).host_key_fingerprint
    assert sim.stats.commands >= 1 and sim.stats.auth_failures == auth_before


def test_unreachable_address_times_out_as_unreachable(collect):
    # A loopback listener whose accept queue is full drops further SYNs.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        fillers.append(s)
    device = Device(id="00000000-0000-4000-8000-000000000001", host="127.0.0.1", port=port,
                    credentials=CredentialRef(legacy=encrypt_credentials(KEY, "admin", "x"), digest="d"))
    settings = Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY})
    try:
        result, _, _ = collect(device, settings=settings,
                               options=SSHOptions(connect_timeout=1, command_timeout=2))
    finally:
        for s in [*fillers, server]:
            s.close()
    assert result.error_kind in (errors.UNREACHABLE, errors.TIMEOUT), result


def test_non_ssh_service_is_unknown(collect):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer():
        conn, _ = server.accept()
        conn.sendall(b"SSH-1.5-AncientServer\r\n")
        conn.recv(100)
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    device = Device(id="00000000-0000-4000-8000-000000000002", host="127.0.0.1",
                    port=server.getsockname()[1],
                    credentials=CredentialRef(legacy=encrypt_credentials(KEY, "admin", "x"), digest="d"))
    result, _, _ = collect(device, settings=Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY}))
    server.close()
    assert result.error_kind == errors.UNKNOWN and "SSH" in result.error


def test_corrupt_ciphertext_is_a_credentials_error(sim_fleet, collect):
    sim, sims, _ = sim_fleet(1)
    blob = bytearray(encrypt_credentials(KEY, "admin", sims[0].password))
    blob[20] ^= 0xFF
    device = Device(id=sims[0].id, host="127.0.0.1", port=sims[0].port,
                    credentials=CredentialRef(legacy=bytes(blob), digest="d"))
    result, _, _ = collect(device, settings=Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY}))
    assert result.error_kind == errors.CREDENTIALS
    assert sim.stats.connections == 0  # never dialled


def test_legacy_credentials_log_in(sim_fleet, collect):
    sim, sims, _ = sim_fleet(1)
    device = Device(id=sims[0].id, host="127.0.0.1", port=sims[0].port,
                    credentials=CredentialRef(legacy=encrypt_credentials(KEY, "admin", sims[0].password),
                                              digest="d"))
    result, _, _ = collect(device, settings=Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY}))
    assert result.ok, result


def test_sink_failure_is_publish_failed(sim_fleet, collect):
    sim, sims, inventory = sim_fleet(1)
    device = next(iter(_devices(inventory).values()))
    result, _, _ = collect(device, sink=FailingSink())
    assert result.error_kind == errors.PUBLISH_FAILED and "disk full" in result.error


def test_key_file_logs_in_with_a_public_key(sim_fleet, collect, tmp_path):
    import paramiko
    import yaml

    sim, sims, inventory = sim_fleet(1)
    key = paramiko.ECDSAKey.generate()
    key_path = tmp_path / "id_ecdsa"
    key.write_private_key_file(str(key_path))
    sims[0].authorized_key = f"{key.get_name()} {key.get_base64()}"
    sims[0].password = "not-used-with-a-key"
    rows = yaml.safe_load(inventory.read_text())["devices"]
    del rows[0]["password"]
    rows[0]["key_file"] = str(key_path)
    inventory.write_text(yaml.safe_dump({"devices": rows}))
    result, _, _ = collect(YamlInventory(inventory).load().devices[0])
    assert result.ok, result


@pytest.mark.parametrize("real, recorded", [("6.49.10", "7.16"), ("7.16", "6.49.10")])
def test_a_stale_recorded_version_is_corrected_not_trusted(sim_fleet, collect, tmp_path, real, recorded):
    sim, sims, inventory = sim_fleet(1, versions=(real,))
    device = next(iter(_devices(inventory).values()))
    stale = Device(**{**device.__dict__, "routeros_version": recorded})
    result, known, _ = collect(stale)
    assert result.ok, result
    assert known.routeros_version == real
    event = json.loads((tmp_path / "out" / "snapshots.jsonl").read_text().splitlines()[-1])
    # show-sensitive was asked for: whichever release, the secrets are in the backup.
    assert sim.device(device.id).secret in event["config_text"]
    assert event["routeros_version"] == real
