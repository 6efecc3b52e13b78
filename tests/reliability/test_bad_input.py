"""Bad input: settings, inventory rows (YAML and PostgreSQL), ciphertexts and credential
documents. Each bad item gets one clear line; the rest of the fleet is backed up as usual.

Row-by-row parsing is unit-tested in ``tests/unit/test_inventory_yaml.py`` and
``tests/integration/test_inventory_pg.py``, decryption in
``tests/unit/test_credentials_legacy.py``; here the bad items sit in a fleet of real
devices that are backed up in the same run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid

import psycopg
import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ray_backup import errors
from ray_backup.cli import EXIT_USAGE, main
from ray_backup.coordination.local import LocalCoordinator
from ray_backup.credentials.legacy import encrypt_credentials, load_key
from ray_backup.errors import ConfigError
from ray_backup.inventory.postgres import PostgresInventory
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.settings import CONFIG_ENV, Settings
from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml
from ray_backup.sinks.directory import DirectorySink
from tests.reliability import harness
from tests.reliability.harness import KEY

SECRET_VALUE = "hunter2-SECRET-VALUE"

# One bad value per validated setting, and what its line must say.
BAD = {
    "DATABASE_URL": (f"mysql://backup:{SECRET_VALUE}@db/network", "must be a postgresql:// URL"),
    "REDIS_URL": (f"localhost:6379/{SECRET_VALUE}", "must be a redis://, rediss:// or unix://"),
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka-1:9093,kafka-2:port", "comma-separated list of host:port"),
    "KAFKA_TOPIC": ("config snapshots", "must be a Kafka topic name"),
    "KAFKA_SECURITY_PROTOCOL": ("TLS", "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    "KAFKA_SASL_MECHANISM": ("MD5", "must be one of PLAIN, SCRAM-SHA-256"),
    "CREDENTIAL_ENCRYPTION_KEY": (SECRET_VALUE, "must be standard base64"),
    "OPENBAO_ADDR": ("bao.example.net:8200", "must be an http:// or https:// URL"),
    "OPENBAO_TRANSIT_KEY": ("tenant_{tenant}", "only {tenant_id}"),
    "CONFIG_BACKUP_INTERVAL": ("nan", "must be a finite number"),
    "CONFIG_BACKUP_MAX_CONCURRENT": ("0", "greater than 0"),
    "CONFIG_BACKUP_COMMAND_TIMEOUT": ("inf", "must be a finite number"),
    "CONFIG_BACKUP_CONNECT_TIMEOUT": ("-1", "greater than 0"),
    "CONFIG_BACKUP_JITTER_MIN": ("-1", "0 or more"),
    "CONFIG_BACKUP_JITTER_MAX": ("soon", "must be a number"),
    "CONFIG_BACKUP_LOGINS_PER_SECOND": ("1e999", "must be a finite number"),
    "CONFIG_BACKUP_MAX_OUTPUT_BYTES": ("16M", "must be a number"),
    "CONFIG_BACKUP_EXPORT_MODE": ("show", "show-sensitive or hide-sensitive"),
    "DEVICE_REFRESH_SECONDS": ("0", "greater than 0"),
    "CREDENTIAL_CACHE_TTL": ("-inf", "must be a finite number"),
    "RAY_BACKUP_LOG_LEVEL": ("LOUD", "must be one of DEBUG"),
    "RAY_BACKUP_SPOOL_MAX_BYTES": ("1.5", "must be a number"),
    "RAY_BACKUP_METRICS_PORT": ("70000", "port number"),
    "RAY_BACKUP_DEVICES_PER_ACTOR": ("-3", "must be auto or a whole number greater than 0"),
    "RAY_BACKUP_CHANGES_TOPIC": ("config changes", "must be a Kafka topic name"),
    "RAY_BACKUP_HISTORY_WRITERS": ("0", "greater than 0"),
    "CONFIG_RETENTION_DAYS": ("-5", "greater than 0"),
    "RAY_BACKUP_SSH_LEGACY_ALGORITHMS": ("maybe", "must be 1 or 0"),
}
# Free text by nature: any string is a valid value.
FREE_TEXT = {"RAY_BACKUP_REDIS_PREFIX", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
             "KAFKA_SSL_CA_LOCATION", "OPENBAO_TOKEN", "OPENBAO_TRANSIT_MOUNT",
             "RAY_BACKUP_INVENTORY", "RAY_BACKUP_OUTPUT_DIR", "RAY_BACKUP_SPOOL_DIR",
             "RAY_BACKUP_HISTORY_GROUP"}  # a Kafka group id may be any string
SECRETS = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata["secret"]}


def test_every_setting_is_checked_or_free_text():
    names = {f.metadata["env"] for f in dataclasses.fields(Settings)}
    assert set(BAD) | FREE_TEXT == names, "a new setting needs a row in BAD (or FREE_TEXT)"


def problem_lines(**load) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Settings.load(**load)
    return str(caught.value).splitlines()


def check_lines(lines: list[str], prefix: str = "") -> None:
    assert len(lines) == len(BAD), "\n".join(lines)
    for name, (value, reason) in BAD.items():
        (line,) = [line for line in lines if line.startswith(f"{prefix}{name}: ")]
        assert reason in line, line
        if name in SECRETS:
            assert value not in line and "a hidden value" in line, line
    assert SECRET_VALUE not in "\n".join(lines)


def test_every_bad_setting_is_one_line_naming_it_and_no_secret():
    check_lines(problem_lines(environ={name: value for name, (value, _) in BAD.items()}))


def test_the_same_in_a_config_file(tmp_path):
    path = tmp_path / "ray-backup.yaml"
    path.write_text(yaml.safe_dump({name: value for name, (value, _) in BAD.items()}))
    check_lines(problem_lines(environ={}, config_file=path), prefix=f"{path}: ")


@pytest.mark.parametrize("name", [n for n, (v, _) in BAD.items() if v in ("nan", "inf")] +
                         ["CONFIG_BACKUP_JITTER_MAX", "DEVICE_REFRESH_SECONDS"])
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e400"])
def test_non_finite_numbers_are_refused(name, value):
    # nan next_due would make a device loop back up without pause; inf never times out.
    (line,) = problem_lines(environ={name: value})
    assert line.startswith(f"{name}: must be") and value in line


@pytest.mark.parametrize("value", ["1\n2", "60\r\nCONFIG_BACKUP_INTERVAL=1", "\x1b[31m60"])
def test_a_value_with_line_breaks_is_still_one_line(value):
    (line,) = problem_lines(environ={"CONFIG_BACKUP_INTERVAL": value})
    assert "\n" not in line and "\r" not in line and "\x1b" not in line


def test_wrong_yaml_types_in_the_config_file(tmp_path):
    path = tmp_path / "ray-backup.yaml"
    path.write_text("CONFIG_BACKUP_INTERVAL: [60, 120]\nCONFIG_BACKUP_MAX_CONCURRENT: {a: 1}\n"
                    "KAFKA_TOPIC: 12\nCONFIG_BACKUP_EXPORT_MODE: true\n")
    lines = problem_lines(environ={}, config_file=path)
    assert len(lines) == 3, lines  # the topic "12" is a valid name
    assert all(line.startswith(f"{path}: ") for line in lines)


def test_good_tls_settings_load():
    settings = Settings.load(environ={
        "DATABASE_URL": "postgresql+asyncpg://rb:pw@db:5432/network?sslmode=verify-full",
        "REDIS_URL": "rediss://:pw@redis.example.net:6380/0?ssl_cert_reqs=required",
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1.example.net:9093, [2001:db8::1]:9093",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "rb", "KAFKA_SASL_PASSWORD": "pw",
        "OPENBAO_ADDR": "https://bao:8200", "OPENBAO_TOKEN": "t",
    })
    assert (settings.kafka_security_protocol, settings.kafka_sasl_mechanism) == (
        "SASL_SSL", "SCRAM-SHA-512")


def test_run_with_bad_settings_exits_before_starting_anything(monkeypatch, capsys):
    import ray

    for f in dataclasses.fields(Settings):
        monkeypatch.delenv(f.metadata["env"], raising=False)
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.setenv("CONFIG_BACKUP_INTERVAL", "nan")
    monkeypatch.setenv("REDIS_URL", f"redis//{SECRET_VALUE}")
    assert main(["run"]) == EXIT_USAGE
    err = capsys.readouterr().err.splitlines()
    assert sorted(line.split(":")[1].strip() for line in err) == ["CONFIG_BACKUP_INTERVAL",
                                                                  "REDIS_URL"]
    assert all(line.startswith("error: ") for line in err) and SECRET_VALUE not in str(err)
    assert not ray.is_initialized()


# -- inventory rows in a fleet -------------------------------------------------------------


@pytest.fixture
def healthy(tmp_path):
    sims = make_fleet(3, seed=uuid.uuid4().int % 10**9, versions=("7.16", "6.49.10"))
    with Simulator(sims) as simulator:
        yield simulator


def back_up(devices, tmp_path, settings=None):
    fleet = harness.fleet(devices, harness.collector(DirectorySink(tmp_path / "out"),
                                                     settings=settings), LocalCoordinator())
    return {i: t.result for i, t in fleet.round().items()}


BAD_YAML_ROWS = [
    ({"id": "not-a-uuid", "host": "127.0.0.1", "username": "a", "password": "p"}, "id is not a UUID"),
    ({"host": "127.0.0.1", "username": "a", "password": "p"}, "id must be a UUID string"),
    ({"id": "{id}", "host": "10.0.0.300", "username": "a", "password": "p"}, "host is not"),
    ({"id": "{id}", "host": "127.0.0.1", "port": 70000, "username": "a", "password": "p"},
     "out of range"),
    ({"id": "{id}", "host": "127.0.0.1", "username": "a", "password": 1234}, "password must be a string"),
    ({"id": "{id}", "host": "127.0.0.1", "username": "a"}, "password or key_file is missing"),
    ({"id": "{id}", "host": "127.0.0.1", "username": "a", "password": "p",
      "ssh_host_key_fingerprint": "MD5:aa:bb"}, "ssh_host_key_fingerprint must look like"),
    ({"id": "{id}", "host": "127.0.0.1", "username": "a", "password": "p", "routeros_version": 7.1},
     "routeros_version must be a string"),
    ({"id": "{id}", "host": "127.0.0.1", "username": "a", "password": "p", "colour": "blue"},
     "unknown field"),
    ("just a string", "row must be a mapping"),
    (["a", "list"], "row must be a mapping"),
]


def test_malformed_yaml_rows_cost_one_line_each_and_the_fleet_goes_on(healthy, tmp_path):
    path = write_inventory_yaml(tmp_path / "fleet.yaml", healthy.devices)
    rows = yaml.safe_load(path.read_text())["devices"]
    for bad, _ in BAD_YAML_ROWS:
        if isinstance(bad, dict) and bad.get("id") == "{id}":
            bad = {**bad, "id": str(uuid.uuid4())}
        rows.append(bad)
    rows.append(dict(rows[0]))  # a duplicate id
    path.write_text(yaml.safe_dump({"devices": rows}))
    loaded = YamlInventory(path).load()
    assert sorted(d.id for d in loaded.devices) == sorted(s.id for s in healthy.devices)
    assert len(loaded.errors) == len(BAD_YAML_ROWS) + 1
    for line, (_, reason) in zip(loaded.errors, BAD_YAML_ROWS, strict=False):
        assert line.startswith("inventory row ") and "\n" not in line and reason in line, line
        assert "(line " in line  # where to look in the file
    assert "duplicate id" in loaded.errors[-1]
    results = back_up(loaded.devices, tmp_path)
    assert all(r.ok for r in results.values()), results


TEXT_LAYOUT = """
CREATE TABLE devices (
    id uuid PRIMARY KEY, tenant_id uuid, hostname text, ip_address varchar(64),
    ssh_port integer, encrypted_credentials bytea, encrypted_credentials_transit text,
    routeros_version text, ssh_host_key_fingerprint text, ssh_host_key_first_seen timestamptz,
    ssh_host_key_last_verified timestamptz
)
"""
TENANT = "11111111-2222-3333-4444-555555555555"


def sealed(plaintext: bytes, key: str = KEY) -> bytes:
    nonce = os.urandom(12)
    return nonce + AESGCM(load_key(key)).encrypt(nonce, plaintext, None)


def test_malformed_postgres_rows_and_credentials_fail_alone(healthy, pg_url, tmp_path):
    password = healthy.devices[0].password
    good = encrypt_credentials(KEY, "admin", password)
    other_key = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI="
    sim = {s.name: s for s in healthy.devices}
    first, second, third = sim.values()
    # (hostname, address, port, legacy blob, transit, fingerprint)
    rows = [
        ("good-0", "127.0.0.1", first.port, good, None, None),
        ("good-padded-key", "127.0.0.1", second.port, good, None, second.host_key_fingerprint + "="),
        # a tagged document, as newer backends write it; an inet-style address
        ("good-2", "127.0.0.1/32", third.port, encrypt_credentials(KEY, "admin", password, typed=True),
         None, None),
        # rows the inventory refuses
        ("bad-address", "127.0.0.300", 22, good, None, None),
        ("bad-port", "127.0.0.1", 0, good, None, None),
        ("bad-transit", "127.0.0.1", 22, None, "not-vault", None),
        ("bad-fingerprint", "127.0.0.1", first.port, good, None, "MD5:12:34:56"),
        ("no-tenant", "127.0.0.1", first.port, good, None, None),
        # rows that load, whose credentials cannot be used
        ("corrupt-blob", "127.0.0.1", first.port, flip(good), None, None),
        ("short-blob", "127.0.0.1", first.port, good[:20], None, None),
        ("other-key", "127.0.0.1", first.port, encrypt_credentials(other_key, "admin", password),
         None, None),
        ("json-list", "127.0.0.1", first.port, sealed(json.dumps(["admin", password]).encode()),
         None, None),
        ("json-number", "127.0.0.1", first.port,
         sealed(json.dumps({"username": "admin", "password": 1234}).encode()), None, None),
        ("json-snmp", "127.0.0.1", first.port,
         sealed(json.dumps({"type": "snmp_v2c", "community": password}).encode()), None, None),
        ("not-json", "127.0.0.1", first.port, sealed(f"admin:{password}".encode()), None, None),
        ("transit-no-openbao", "127.0.0.1", first.port, None, "vault:v1:AAAA", None),
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TEXT_LAYOUT)
        for name, address, port, blob, transit, fingerprint in rows:
            conn.execute(
                "INSERT INTO devices (id, tenant_id, hostname, ip_address, ssh_port,"
                " encrypted_credentials, encrypted_credentials_transit, ssh_host_key_fingerprint)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (str(uuid.uuid4()), None if name == "no-tenant" else TENANT, name, address, port,
                 blob, transit, fingerprint))
    inventory = PostgresInventory(pg_url)
    try:
        loaded = inventory.load()
    finally:
        inventory.close()
    refused = {line.split("hostname '")[1].split("'")[0]: line for line in loaded.errors}
    assert sorted(refused) == ["bad-address", "bad-fingerprint", "bad-port", "bad-transit",
                               "no-tenant"]
    assert all("\n" not in line for line in loaded.errors)
    assert "ssh_host_key_fingerprint must look like" in refused["bad-fingerprint"]

    settings = Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY})
    connections = healthy.stats.connections
    results = back_up(loaded.devices, tmp_path, settings)
    by_name = {d.hostname: results[d.id] for d in loaded.devices}
    assert {n for n, r in by_name.items() if r.ok} == {"good-0", "good-padded-key", "good-2"}
    for name, result in by_name.items():
        if result.ok:
            continue
        assert result.error_kind == errors.CREDENTIALS, (name, result)
        assert "\n" not in result.error and password not in result.error, result.error
    assert healthy.stats.connections == connections + 3  # broken credentials: never dialled
    reasons = {n: r.error for n, r in by_name.items() if not r.ok}
    assert "wrong key or corrupted" in reasons["corrupt-blob"]
    assert "too short" in reasons["short-blob"]
    assert "wrong key or corrupted" in reasons["other-key"]
    assert "not a JSON object" in reasons["json-list"]
    assert "password string" in reasons["json-number"]
    assert "type 'snmp_v2c'" in reasons["json-snmp"]
    assert "did not decrypt to JSON" in reasons["not-json"]
    assert "OPENBAO_ADDR" in reasons["transit-no-openbao"]


def flip(blob: bytes) -> bytes:
    return blob[:20] + bytes([blob[20] ^ 0xFF]) + blob[21:]
