"""Trust-on-first-use host keys of YAML inventories: the JSON sidecar."""

from __future__ import annotations

import json
import multiprocessing
from datetime import datetime, timedelta, timezone

import pytest

from ray_backup.errors import ConfigError
from ray_backup.inventory.hostkeys import HostKeyFile
from ray_backup.inventory.yamlfile import YamlInventory, hostkeys_path

ID1 = "7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51"
ID2 = "0b8f3c4d-1111-4222-8333-944455556666"
ID3 = "3c2b1a00-9999-4aaa-8bbb-cccccccccccc"  # in no inventory
FP_A = "SHA256:" + "A" * 43
FP_B = "SHA256:" + "B" * 43
FP_PIN = "SHA256:" + "P" * 43


def write_inventory(tmp_path):
    """ID1 trusted on first use, ID2 pinned in the file."""
    path = tmp_path / "inv.yaml"
    path.write_text(
        "devices:\n"
        f"  - {{id: {ID1}, host: 10.0.0.1, username: a, password: b}}\n"
        f"  - {{id: {ID2}, host: 10.0.0.2, username: a, password: b,"
        f" ssh_host_key_fingerprint: '{FP_PIN}'}}\n"
    )
    return path


@pytest.fixture
def inventory(tmp_path):
    return YamlInventory(write_inventory(tmp_path))


def fingerprints(inv: YamlInventory) -> dict[str, str | None]:
    return {d.id: d.host_key_fingerprint for d in inv.load().devices}


def test_first_use_is_stored_and_merged(inventory):
    assert fingerprints(inventory) == {ID1: None, ID2: FP_PIN}
    assert inventory.record_host_key(ID1, FP_A) is True
    assert fingerprints(inventory)[ID1] == FP_A
    stored = json.loads(hostkeys_path(inventory.path).read_text())
    assert stored[ID1]["fingerprint"] == FP_A and stored[ID1]["first_seen"]


def test_a_different_key_never_replaces_the_stored_one(inventory):
    inventory.record_host_key(ID1, FP_A)
    assert inventory.record_host_key(ID1, FP_B) is False
    assert inventory.record_host_key(ID1.upper(), FP_A) is True  # same key again: verified
    assert fingerprints(inventory)[ID1] == FP_A


def test_pinned_fingerprint_wins(inventory):
    inventory.record_host_key(ID2, FP_A)
    assert fingerprints(inventory)[ID2] == FP_PIN


def test_reset(inventory):
    inventory.record_host_key(ID1, FP_A)
    assert inventory.reset_host_key(ID1) is True
    assert inventory.reset_host_key(ID1) is False
    assert fingerprints(inventory)[ID1] is None
    assert inventory.record_host_key(ID1, FP_B) is True


def test_mark_verified_moves_only_last_verified(tmp_path):
    times = iter([datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(hours=h)
                  for h in range(3)])
    keys = HostKeyFile(tmp_path / "k.json", now=lambda: next(times))
    keys.record(ID1, FP_A)
    keys.touch(ID1)
    keys.touch(ID2)  # unknown device: nothing to verify
    entry = json.loads((tmp_path / "k.json").read_text())[ID1]
    assert entry["first_seen"].startswith("2025-01-01T00")
    assert entry["last_verified"].startswith("2025-01-01T01")
    assert list(json.loads((tmp_path / "k.json").read_text())) == [ID1]


def test_writes_leave_no_temporary_files(inventory, tmp_path):
    inventory.record_host_key(ID1, FP_A)
    inventory.mark_verified(ID1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["inv.yaml", "inv.yaml.hostkeys.json", "inv.yaml.hostkeys.json.lock"]


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"x": {"fp": 1}}', '{"x": 5}'])
def test_damaged_sidecar_fails_the_load(inventory, content):
    hostkeys_path(inventory.path).write_text(content)
    with pytest.raises(ConfigError, match="host key file"):
        inventory.load()


def test_hand_written_sidecar(inventory):
    hostkeys_path(inventory.path).write_text(json.dumps({ID1: FP_B}))
    assert fingerprints(inventory)[ID1] == FP_B


def test_sidecar_changes_are_seen_without_yaml_changes(inventory):
    fingerprints(inventory)
    HostKeyFile(hostkeys_path(inventory.path)).record(ID1, FP_A)  # e.g. another process
    assert fingerprints(inventory)[ID1] == FP_A


def _record_many(path: str, start: int) -> None:
    keys = HostKeyFile(path)
    for i in range(start, start + 25):
        keys.record(f"device-{i}", FP_A)


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "k.json")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_record_many, args=(path, n * 25)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(HostKeyFile(path).fingerprints()) == 100



def test_accept_replaces_the_stored_key_and_waits_for_a_backup_to_verify_it(inventory):
    inventory.record_host_key(ID1, FP_A)
    inventory.accept_host_key(ID1, FP_B + "=")  # as ssh-keygen may print it
    assert fingerprints(inventory)[ID1] == FP_B
    entry = json.loads(hostkeys_path(inventory.path).read_text())[ID1]
    assert entry["fingerprint"] == FP_B and entry["first_seen"] and "last_verified" not in entry
    assert inventory.record_host_key(ID1, FP_A) is False  # the accepted key is now the pinned one


def test_accept_and_reset_name_unknown_and_pinned_devices(inventory):
    from ray_backup.errors import UnknownDevice

    with pytest.raises(UnknownDevice, match=ID3):
        inventory.accept_host_key(ID3, FP_A)
    with pytest.raises(UnknownDevice, match=ID3):
        inventory.reset_host_key(ID3)
    with pytest.raises(ConfigError, match="pinned in .*inv.yaml"):
        inventory.accept_host_key(ID2, FP_A)
    with pytest.raises(ConfigError, match="pinned"):
        inventory.reset_host_key(ID2)
    with pytest.raises(ValueError, match="SHA256"):
        inventory.accept_host_key(ID1, "MD5:aa:bb")
    assert not hostkeys_path(inventory.path).exists()


def test_reset_of_a_device_with_no_key_is_not_an_error(inventory):
    assert inventory.reset_host_key(ID1) is False
