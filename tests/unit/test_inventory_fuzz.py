"""Fuzzing the YAML inventory: rows never crash, files fail only with ConfigError."""

from __future__ import annotations

import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_backup.errors import ConfigError
from ray_backup.inventory.yamlfile import FIELDS, load_yaml, parse_inventory

PATH = "/nonexistent/inventory.yaml"
SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.uuids().map(str), st.sampled_from(["127.0.0.1", "::1", "host.example", "22", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
keys = st.sampled_from(sorted(FIELDS)) | st.text(max_size=10)
rows = st.one_of(values, st.dictionaries(keys, values, max_size=8))


def check(parsed, count: int) -> None:
    assert len(parsed.devices) + len(parsed.errors) == count
    for line in parsed.errors:
        assert line.startswith("inventory row ") and "\n" not in line
    for device in parsed.devices:
        assert str(uuid.UUID(device.id)) == device.id
        assert 1 <= device.port <= 65535 and device.host
        assert device.credentials.inventory_file == PATH
    assert len({d.id for d in parsed.devices}) == len(parsed.devices)


@SETTINGS
@given(st.lists(rows, max_size=6))
def test_garbage_rows_become_error_lines(garbage):
    check(parse_inventory({"devices": garbage}, PATH), len(garbage))


plausible = st.fixed_dictionaries(
    {"id": st.uuids().map(str) | scalars, "username": scalars, "password": scalars},
    optional={"host": scalars, "port": st.integers(-5, 70000) | scalars, "tenant_id": scalars,
              "hostname": scalars, "routeros_version": scalars, "key_file": scalars,
              "ssh_host_key_fingerprint": scalars, "driver": scalars},
)


@SETTINGS
@given(st.lists(plausible, max_size=6))
def test_plausible_rows_load_or_fail_alone(candidates):
    check(parse_inventory({"devices": candidates}, PATH), len(candidates))


@SETTINGS
@given(st.lists(st.fixed_dictionaries({
    "id": st.uuids().map(str), "host": st.just("10.0.0.1"), "username": st.just("admin"),
    "password": st.text(min_size=1, max_size=20).map(lambda s: "PW~" + s),
    "port": st.integers(-100, 100_000) | st.text(max_size=5),
}), max_size=5))
def test_passwords_never_reach_error_lines(candidates):
    parsed = parse_inventory({"devices": candidates}, PATH)
    assert not any("PW~" in line for line in parsed.errors)


yamlish = st.lists(
    st.sampled_from(["devices", ":", " ", "  ", "\n", "-", "[", "]", "{", "}", ",", "id", "host",
                     "port", "'", '"', "!!str", "!!python/object:x", "&a", "*a", "?", "|", ">",
                     "2024-02-30", "0x1F", "1e999", "~", "null", "#", "\t", "\\", "%YAML 1.1",
                     "---", "..."]) | st.text(max_size=3),
    max_size=40,
).map("".join)


def parse_text(text: str) -> None:
    try:
        data, lines = load_yaml(text, PATH)
        parse_inventory(data, PATH, lines)
    except ConfigError:
        pass


@SETTINGS
@given(yamlish)
def test_yaml_like_text_fails_only_with_config_error(text):
    parse_text(text)


@SETTINGS
@given(st.text(max_size=200))
def test_any_text_fails_only_with_config_error(text):
    parse_text(text)


def test_deep_nesting_is_a_config_error():
    parse_text("devices: " + "[" * 5000 + "]" * 5000)


def test_alias_bomb_stays_cheap():
    bomb = ["a: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 9):
        bomb.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    text = "\n".join(bomb).replace("a: &a0", "a0: &a0") + "\n"
    text = text.replace("a0: &a0", "devices:\n  - {id: x, host: *a8, port: *a8}\nb: &a0")
    parse_text(text)
