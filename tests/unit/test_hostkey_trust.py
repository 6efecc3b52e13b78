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
from tests.unit.test_inventory_hostkeys import FP_A, FP_B, ID1, ID2, ID3, write_inventory


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
    return write_inventory(tmp_path)


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


def run_cli(*argv):
    return cli.main(["hostkey", *argv])


def test_hostkey_accept_and_reset_on_a_yaml_inventory_without_a_job(inventory_file, no_servers,
                                                                    capsys):
    inv = str(inventory_file)
    YamlInventory(inv).record_host_key(ID1, FP_A)
    assert run_cli("accept", ID1, "--fingerprint", FP_B, "--inventory", inv) == cli.EXIT_OK
    assert json.loads(hostkeys_path(inv).read_text())[ID1]["fingerprint"] == FP_B
    assert "no running job" in capsys.readouterr().out
    assert run_cli("reset", ID1, "--inventory", inv) == cli.EXIT_OK
    assert ID1 not in json.loads(hostkeys_path(inv).read_text())
    assert "next backup trusts and stores" in capsys.readouterr().out
    assert run_cli("reset", ID1, "--inventory", inv) == cli.EXIT_OK  # nothing stored: fine


@pytest.mark.parametrize("argv, message", [
    (("accept", ID3, "--fingerprint", FP_A), f"device {ID3} is not in"),
    (("reset", ID3), f"device {ID3} is not in"),
    (("accept", ID1, "--fingerprint", "SHA256:short"), "--fingerprint must look like"),
    (("accept", "not-a-uuid", "--fingerprint", FP_A), "DEVICE_ID"),
    (("accept", ID2, "--fingerprint", FP_A), "pinned in"),
    (("accept", ID1), "no host key mismatch on record; pass --fingerprint"),
])
def test_hostkey_bad_input_is_one_line_and_exit_2(inventory_file, no_servers, capsys, argv,
                                                  message):
    assert run_cli(*argv, "--inventory", str(inventory_file)) == cli.EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not hostkeys_path(inventory_file).exists()


def test_hostkey_help_names_the_default_and_the_effect(capsys):
    with pytest.raises(SystemExit):
        cli.main(["hostkey", "accept", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "presented at its last mismatch" in text and "needs no running job" in text
