"""Field validators shared by the inventory sources, and URL redaction."""

from __future__ import annotations

import pytest

from ray_backup.inventory.fields import (
    parse_db_address,
    parse_fingerprint,
    parse_flag,
    parse_host,
    parse_port,
    parse_uuid,
    shown,
)
from ray_backup.inventory.postgres import psycopg_url, redact_url


@pytest.mark.parametrize("value, expected", [
    ("10.0.0.1", "10.0.0.1"), (" 10.0.0.1 ", "10.0.0.1"), ("2001:DB8:0::1", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1%eth0"), ("router-1", "router-1"),
    ("r1.example.net.", "r1.example.net."),
    ("under_score.lan", "under_score.lan"),
])
def test_hosts(value, expected):
    assert parse_host(value) == expected


@pytest.mark.parametrize("value", [
    "", " ", None, 10, "10.0.0.999", "1.2.3", "a b", "-bad.example", "x" * 64 + ".com",
    "a." * 130 + "com", "host/24", "10.0.0.1:22", "http://x",
])
def test_bad_hosts(value):
    with pytest.raises(ValueError, match="host"):
        parse_host(value)


@pytest.mark.parametrize("value, expected", [
    ("10.0.0.1/32", "10.0.0.1"), ("10.0.0.1/24", "10.0.0.1"), ("2001:db8::1/128", "2001:db8::1"),
    ("10.0.0.1", "10.0.0.1"), ("router.example.net", "router.example.net"),
])
def test_db_addresses(value, expected):
    assert parse_db_address(value) == expected


@pytest.mark.parametrize("value", ["10.0.0.1/abc", "name/32", "/32", None, "10.0.0.256"])
def test_bad_db_addresses(value):
    with pytest.raises(ValueError, match="^ip_address "):
        parse_db_address(value)


@pytest.mark.parametrize("value, expected", [(None, 22), (1, 1), (65535, 65535), ("2201", 2201)])
def test_ports(value, expected):
    assert parse_port(value) == expected


@pytest.mark.parametrize("value", [0, -1, 65536, True, 22.0, "ssh", "²", [], 10**5000],
                         ids=["0", "-1", "65536", "true", "float", "word", "superscript", "list",
                              "huge"])
def test_bad_ports(value):
    with pytest.raises(ValueError, match="port"):
        parse_port(value)


def test_uuid_is_canonical():
    assert parse_uuid("7D0C6A1E3F574C7E9A8E2B1F0C9D4E51") == "7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51"
    for bad in ("abc", 5, None, ""):
        with pytest.raises(ValueError):
            parse_uuid(bad)


def test_fingerprints():
    good = "SHA256:" + "a" * 43
    assert parse_fingerprint(good) == good
    assert parse_fingerprint(good + "=") == good
    assert parse_fingerprint(None) is None and parse_fingerprint("") is None
    for bad in ("MD5:aa:bb", "SHA256:short", 5, "sha256:" + "a" * 43):
        with pytest.raises(ValueError, match="ssh-keygen"):
            parse_fingerprint(bad)


def test_shown_is_short_and_never_expands_containers():
    assert shown("x" * 500).endswith("...") and len(shown("x" * 500)) == 60
    nested: list = []
    for _ in range(50):
        nested = [nested, nested]
    assert shown(nested) == "a list"
    assert shown(10**5000) == "a very long int"


@pytest.mark.parametrize("url, expected", [
    ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=secret&sslmode=require",
     "postgresql://u@h/db?password=***&sslmode=require"),
    ("host=h password=secret dbname=db", "host=h password=*** dbname=db"),
    ("host=h password='with space' dbname=db", "host=h password=*** dbname=db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_sqlalchemy_scheme_is_accepted():
    assert psycopg_url("postgresql+asyncpg://u:p@h/db") == "postgresql://u:p@h/db"
    assert psycopg_url("postgres://u@h/db") == "postgres://u@h/db"


@pytest.mark.parametrize("value, expected", [
    (None, False), (True, True), (False, False), (1, True), (0, False),
    ("true", True), (" YES ", True), ("t", True), ("f", False), ("", False), ("off", False),
])
def test_flags(value, expected):
    assert parse_flag(value, "ssh_legacy_algorithms") is expected


@pytest.mark.parametrize("value", [2, "maybe", 1.0, ["true"]])
def test_bad_flags(value):
    with pytest.raises(ValueError, match="ssh_legacy_algorithms must be true or false"):
        parse_flag(value, "ssh_legacy_algorithms")
