"""Who writes trusted host keys (inventory.trust), and the `hostkey` commands on a YAML file."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from ray_backup import cli
from ray_backup.inventory.trust import InventoryHostKeys, SupervisorHostKeys, VerifyNotes
from ray_backup.inventory.yamlfile import YamlInventory, hostkeys_path
from ray_backup.runtime import Runtime

ID1 = "7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51"
ID2 = "0b8f3c4d-1111-4222-8333-944455556666"
ID3 = "3c2b1a00-9999-4aaa-8bbb-cccccccccccc"
FP_A = "SHA256:" + "A" * 43
FP_B = "SHA256:" + "B" * 43
FP_PIN = "SHA256:" + "P" * 43


class Notes:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail
        self.done = threading.Event()

    def verified(self, device_id, fingerprint):
        self.calls.append((device_id, fingerprint))
        self.done.set()
        if self.fail:
            raise OSError("database down")


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_verifications_are_noted_in_the_background_at_most_once_per_period():
    notes, clock = Notes(), Clock()
    verify = VerifyNotes(notes, every_s=600, clock=clock)
    verify("d1", FP_A)
    verify("d1", FP_A)  # same period: skipped
    verify("d2", FP_A)
    clock.now = 601
    verify("d1", FP_A)
    verify.close()
    assert notes.calls == [("d1", FP_A), ("d2", FP_A), ("d1", FP_A)]


def test_a_failed_verification_note_never_reaches_the_backup(caplog):
    notes = Notes(fail=True)
    verify = VerifyNotes(notes)
    verify("d1", FP_A)  # returns at once, whatever the store does
    verify.close()
    assert notes.calls == [("d1", FP_A)]
    assert "could not note the host key as verified" in caplog.text


@pytest.fixture
def inventory_file(tmp_path):
    path = tmp_path / "inv.yaml"
    path.write_text(
        "devices:\n"
        f"  - {{id: {ID1}, host: 10.0.0.1, username: a, password: b}}\n"
        f"  - {{id: {ID2}, host: 10.0.0.2, username: a, password: b,"
        f" ssh_host_key_fingerprint: '{FP_PIN}'}}\n"
    )
    return path


@pytest.fixture
def no_servers(monkeypatch, tmp_path):
    for name in ("REDIS_URL", "DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "RAY_BACKUP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_BACKUP_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("RAY_ADDRESS", "local")  # no cluster to tell


def test_job_members_with_a_yaml_inventory_write_through_the_supervisor(
        inventory_file, no_servers, monkeypatch):
    monkeypatch.setenv("RAY_BACKUP_INVENTORY", str(inventory_file))
    member = asyncio.run(Runtime.start())
    worker = asyncio.run(Runtime.start(job_member=False))
    try:
        assert isinstance(member.host_keys, SupervisorHostKeys)
        assert isinstance(worker.host_keys, InventoryHostKeys)
        assert worker.record_host_key(ID1, FP_A) is True
        assert worker.record_host_key(ID1, FP_B) is False
    finally:
        member.close()
        worker.close()
