"""The YAML inventory: good rows, one error line per bad row, file-level errors, secrecy."""

from __future__ import annotations

import os
import pickle
import textwrap

import pytest

from ray_backup.errors import ConfigError
from ray_backup.inventory import yamlfile
from ray_backup.inventory.base import Inventory, InventorySource, open_inventory
from ray_backup.inventory.postgres import PostgresInventory
from ray_backup.inventory.yamlfile import YamlInventory, load_secrets
from ray_backup.settings import Settings

ID1 = "7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51"
ID2 = "0b8f3c4d-1111-4222-8333-944455556666"
ID3 = "5e7e0c1a-aaaa-4bbb-8ccc-dddddddddddd"
TENANT = "11111111-2222-3333-4444-555555555555"
FP = "SHA256:" + "A" * 43
SECRET = "never-show-me"


def write(tmp_path, body: str, name: str = "inventory.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def load(tmp_path, body: str) -> Inventory:
    return YamlInventory(write(tmp_path, body)).load()


def test_good_rows(tmp_path):
    (tmp_path / "id_ed25519").write_text("key")
    inv = load(tmp_path, f"""
        devices:
          - id: {ID1.upper()}
            tenant_id: {TENANT}
            hostname: core-1
            host: 127.0.0.1
            port: 2201
            username: admin
            password: {SECRET}
            routeros_version: "7.16"
            ssh_host_key_fingerprint: {FP}
          - id: {ID2}
            host: "2001:DB8::0:1"
            username: backup
            key_file: id_ed25519
          - id: {ID3}
            host: edge-2.example.net
            port: "22"
            username: admin
            password: ""
        """)
    assert inv.errors == [] and inv.skipped == []
    first, second, third = inv.devices
    assert first.id == ID1 and first.tenant_id == TENANT and first.hostname == "core-1"
    assert (first.host, first.port, first.routeros_version) == ("127.0.0.1", 2201, "7.16")
    assert first.host_key_fingerprint == FP
    assert first.credentials.inventory_file == str(tmp_path / "inventory.yaml")
    assert first.credentials.username == "admin" and first.credentials.present
    assert second.host == "2001:db8::1" and second.port == 22
    assert second.tenant_id == "00000000-0000-0000-0000-000000000000"
    assert second.credentials.key_file == str(tmp_path / "id_ed25519")
    assert third.host == "edge-2.example.net" and third.credentials.digest


def test_password_never_leaves_the_file(tmp_path):
    inv = load(tmp_path, f"""
        devices:
          - {{id: {ID1}, host: 10.0.0.1, username: admin, password: {SECRET}}}
        """)
    device = inv.devices[0]
    assert SECRET not in repr(device)
    assert SECRET.encode() not in pickle.dumps(device)
    assert SECRET not in repr(inv)


def test_digest_follows_the_password(tmp_path):
    body = "devices:\n  - {id: %s, host: 10.0.0.1, username: admin, password: %s}\n"
    a = load(tmp_path, body % (ID1, "one")).devices[0]
    b = YamlInventory(write(tmp_path, body % (ID1, "two"), "other.yaml")).load().devices[0]
    assert a.credentials.digest != b.credentials.digest


BAD_ROWS = [
    ("{id: not-a-uuid, host: 10.0.0.1, username: a, password: b}", "id is not a UUID"),
    ("{host: 10.0.0.1, username: a, password: b}", "id must be a UUID string"),
    ("{id: %s, host: 10.0.0.999, username: a, password: b}", "host is not an IP address"),
    ("{id: %s, host: 'bad host', username: a, password: b}", "host is not an IP address"),
    ("{id: %s, username: a, password: b}", "host must be an IP address"),
    ("{id: %s, host: 10.0.0.1, port: 70000, username: a, password: b}", "out of range"),
    ("{id: %s, host: 10.0.0.1, port: 0, username: a, password: b}", "out of range"),
    ("{id: %s, host: 10.0.0.1, port: ssh, username: a, password: b}", "port must be a whole"),
    ("{id: %s, host: 10.0.0.1, port: true, username: a, password: b}", "port must be a whole"),
    ("{id: %s, host: 10.0.0.1, password: b}", "username is missing"),
    ("{id: %s, host: 10.0.0.1, username: a}", "password or key_file is missing"),
    ("{id: %s, host: 10.0.0.1, username: a, password: 0123}", "password must be a string"),
    ("{id: %s, host: 10.0.0.1, username: a, key_file: /nonexistent/k}", "does not exist"),
    ("{id: %s, host: 10.0.0.1, username: a, password: b, prot: 22}", "unknown field(s): 'prot'"),
    ("{id: %s, host: 10.0.0.1, username: a, password: b, tenant_id: x}", "tenant_id is not"),
    ("{id: %s, host: 10.0.0.1, username: a, password: b, routeros_version: 7.10}",
     "routeros_version must be a string"),
    ("{id: %s, host: 10.0.0.1, username: a, password: b, ssh_host_key_fingerprint: md5}",
     "ssh_host_key_fingerprint must look like"),
    ("{id: %s, host: 10.0.0.1, username: a, password: b, ssh_legacy_algorithms: maybe}",
     "ssh_legacy_algorithms must be true or false"),
    ("just a string", "row must be a mapping"),
    ("[1, 2]", "row must be a mapping"),
]


@pytest.mark.parametrize("row, message", BAD_ROWS, ids=[m for _, m in BAD_ROWS])
def test_each_bad_row_is_one_error_line_and_the_rest_load(tmp_path, row, message):
    bad = row % ID2 if "%s" in row else row
    inv = load(tmp_path, f"""
        devices:
          - {{id: {ID1}, host: 10.0.0.1, username: a, password: b}}
          - {bad}
          - {{id: {ID3}, host: 10.0.0.3, username: a, password: b}}
        """)
    assert [d.id for d in inv.devices] == [ID1, ID3]
    assert len(inv.errors) == 1
    error = inv.errors[0]
    assert error.startswith("inventory row 2 (") and message in error
    assert error.endswith("(line 4)")
    assert "0123" not in error and "'b'" not in error


def test_error_names_the_row_id(tmp_path):
    inv = load(tmp_path, f"""
        devices:
          - {{id: {ID1}, host: 10.0.0.1, port: 99999, username: a, password: b}}
        """)
    assert inv.errors == [
        f"inventory row 1 (id '{ID1}'): port 99999 is out of range 1-65535 (line 3)"
    ]


def test_all_problems_of_a_row_on_one_line(tmp_path):
    inv = load(tmp_path, """
        devices:
          - {id: abc, host: "", port: -1}
        """)
    assert len(inv.errors) == 1
    assert inv.errors[0].startswith("inventory row 1 (id 'abc'): id is not a UUID")
    for part in ("host must be", "port -1 is out of range", "username is missing"):
        assert part in inv.errors[0]


def test_duplicate_id_keeps_the_first(tmp_path):
    inv = load(tmp_path, f"""
        devices:
          - {{id: {ID1}, host: 10.0.0.1, username: a, password: b}}
          - {{id: {ID1.upper()}, host: 10.0.0.2, username: a, password: b}}
        """)
    assert [d.host for d in inv.devices] == ["10.0.0.1"]
    assert inv.errors == [
        f"inventory row 2 (id '{ID1}'): duplicate id (first used in row 1); row ignored (line 4)"
    ]


@pytest.mark.parametrize(
    "body, message",
    [
        ("devices:\n  - id: a\n   host: b\n",
         r"inventory.yaml: line 3, column \d+: not valid YAML"),
        ("devices: [\n", "not valid YAML"),
        ("", "inventory file is empty"),
        ("# only a comment\n", "inventory file is empty"),
        ("- a\n- b\n", "must be a mapping with a 'devices:' list"),
        ("hosts: []\n", "must be a mapping with a 'devices:' list"),
        ("devices: []\ndevice: []\n", "unknown top-level key"),
        ("devices: {a: 1}\n", "'devices' must be a list"),
        ("devices:\n  - id: 2024-02-30\n", "not valid YAML"),
        ("devices: [!!python/object:os.system {}]\n", "not valid YAML"),
        ("devices:\n  - {? [a, b] : 1}\n", "not valid YAML"),
    ],
)
def test_file_level_errors(tmp_path, body, message):
    with pytest.raises(ConfigError, match=message):
        YamlInventory(write(tmp_path, body)).load()


def test_empty_devices_list_is_an_empty_fleet(tmp_path):
    assert load(tmp_path, "devices:\n").devices == []
    assert load(tmp_path, "devices: []\n").devices == []


def test_missing_and_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        YamlInventory(tmp_path / "nope.yaml").load()
    path = write(tmp_path, b"\xff\xfe".decode("latin-1"))
    path.write_bytes(b"devices: [\xff]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        YamlInventory(path).load()


def test_reload_only_when_changed(tmp_path, monkeypatch):
    body = f"devices:\n  - {{id: {ID1}, host: 10.0.0.1, username: a, password: b}}\n"
    path = write(tmp_path, body)
    inv = YamlInventory(path)
    calls = []
    real = yamlfile.read_inventory_file
    monkeypatch.setattr(yamlfile, "read_inventory_file", lambda p: calls.append(p) or real(p))
    first = inv.load()
    second = inv.load()
    assert len(calls) == 1 and first.devices == second.devices
    second.devices.clear()  # callers may mutate what they got
    assert inv.load().devices == first.devices
    path.write_text(body.replace("10.0.0.1", "10.0.0.2"))
    assert inv.load().devices[0].host == "10.0.0.2" and len(calls) == 2


def test_load_secrets(tmp_path):
    path = write(tmp_path, f"""
        devices:
          - {{id: {ID1}, host: 10.0.0.1, username: admin, password: {SECRET}}}
          - {{id: {ID2}, host: 10.0.0.1, username: admin}}
        """)
    secrets = load_secrets(path)
    assert list(secrets) == [ID1] and secrets[ID1].password == SECRET
    assert SECRET not in repr(secrets)


def test_open_inventory(tmp_path):
    path = write(tmp_path, "devices: []\n")
    assert isinstance(open_inventory(path), YamlInventory)
    assert isinstance(open_inventory(str(path)), YamlInventory)
    assert isinstance(open_inventory(Settings(inventory_file=str(path))), YamlInventory)
    url = "postgresql://user:pw@127.0.0.1:1/db"
    pg = open_inventory(Settings(database_url=url))
    assert isinstance(pg, PostgresInventory) and "pw" not in repr(pg)
    assert isinstance(open_inventory("postgresql+asyncpg://u@h/db"), PostgresInventory)
    both = Settings(database_url=url, inventory_file=str(path))
    assert isinstance(open_inventory(both), YamlInventory)
    with pytest.raises(ConfigError, match="set DATABASE_URL"):
        open_inventory(Settings())
    assert isinstance(open_inventory(path), InventorySource)


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
    write(tmp_path, f"devices:\n  - {{id: {ID1}, host: h1, username: a, password: b}}\n")
    monkeypatch.chdir(tmp_path)
    device = YamlInventory("inventory.yaml").load().devices[0]
    assert os.path.isabs(device.credentials.inventory_file)


def test_legacy_ssh_algorithms_are_off_unless_the_row_allows_them(tmp_path):
    inv = load(tmp_path, f"""
        devices:
          - {{id: {ID1}, host: 10.0.0.1, username: a, password: b, ssh_legacy_algorithms: true}}
          - {{id: {ID2}, host: 10.0.0.2, username: a, password: b, ssh_legacy_algorithms: false}}
          - {{id: {ID3}, host: 10.0.0.3, username: a, password: b}}
        """)
    assert inv.errors == []
    assert [d.ssh_legacy_algorithms for d in inv.devices] == [True, False, False]
