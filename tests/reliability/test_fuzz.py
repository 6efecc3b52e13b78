"""Fuzzing the normalizer and the inventory parsing, beyond the existing fuzz tests.

Existing: ``tests/unit/test_routeros_driver.py::test_normalize_never_fails_and_output_is_tidy``
(any text) and ``tests/unit/test_inventory_fuzz.py`` (YAML rows and text). Added here:
realistic exports with every cosmetic disturbance a device or terminal adds (the hash must
not move, the result must be tidy and idempotent, validation must accept them), arbitrary
device bytes through the whole output path, PostgreSQL rows, inventory field parsers and
the host key sidecar.
"""

from __future__ import annotations

import json
import random
import re
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ray_backup.drivers.base import decode_output, sha256_hex
from ray_backup.drivers.routeros import DRIVER
from ray_backup.errors import ConfigError, InvalidOutput
from ray_backup.inventory.base import Inventory
from ray_backup.inventory.fields import (
    optional_text,
    parse_db_address,
    parse_fingerprint,
    parse_host,
    parse_port,
    parse_uuid,
)
from ray_backup.inventory.hostkeys import _entries
from ray_backup.inventory.postgres import _add_row
from ray_backup.simulator.captures import available_captures, load_capture
from ray_backup.simulator.rosconfig import split_entries, strip_header, wrap

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CAPTURES = [load_capture(name) for name in available_captures()]
ANSI = ["\x1b[0m", "\x1b[1;36m", "\x1b[32m", "\x1b[m", "\x1b[K", "\x1b[?25l", "\x1b[?25h",
        "\x1b[9999B", "\x1b[6n", "\x1b[2J", "\x1b[H"]
TRANSIENT = ["# poe-out status: short_circuit", "# inactive time", "# sfp1 not ready",
             "# interface not running", "# received packet from 10.0.0.1 bad format",
             "# Firmware upgraded successfully, please reboot for changes to take effect!"]
HEADERS = ["# {d} by RouterOS 7.16", "# jan/02/2024 10:20:30 by RouterOS 6.49.10",
           "# 2031-12-31 23:59:59 by RouterOS 7.99.1 (testing)"]


@st.composite
def disturbed_exports(draw):
    """(clean export, the same configuration as a device or terminal might print it).

    One drawn seed decides the per-line disturbances (one draw per line would make
    hypothesis slow on exports of hundreds of lines).
    """
    capture = draw(st.sampled_from(CAPTURES))
    rng = random.Random(draw(st.integers(0, 2**32)))
    clean = capture.export
    entries = split_entries(strip_header(clean))
    width = rng.choice([None, 60, 79, 120, 400])
    if width:  # another terminal width wraps long lines elsewhere
        entries = [wrap(e.replace("\\\n    ", ""), width) for e in entries]
    out = []
    for line in "\n".join(entries).split("\n"):
        if line.startswith("/") and rng.random() < 0.2:
            out.append(rng.choice(TRANSIENT))  # state comments come and go
        if rng.random() < 0.25:
            line = rng.choice(ANSI) + line + rng.choice(ANSI)
        out.append(line + rng.choice(["", "", " ", "\t", "   "]))
        if line.strip() == "":  # a blank line may come out as several
            out.extend([""] * rng.randint(0, 3))
    header = rng.choice(HEADERS).format(d="2025-01-02 03:04:05")
    head = [header, *strip_header_lines(clean)]
    lead = [""] * rng.randint(0, 2)
    text = "\n".join(lead + head + out) + rng.choice(["\n", "\n\n\n", "", "\n  \n"])
    newline = rng.choice(["\n", "\r\n", "\r\r\n"])
    if newline != "\n":
        text = text.replace("\n", newline)
    return clean, rng.choice(["", "\x1b[?25l\x1b[9999B"]) + text


def strip_header_lines(text: str) -> list[str]:
    """The stable header comment lines (software id, model, serial), without the date line."""
    lines = text.split("\n")
    head = []
    for line in lines[1:]:
        if not line.startswith("#"):
            break
        head.append(line)
    return head


def tidy(out: str) -> None:
    assert "\r" not in out and "\x1b[" not in out
    assert out == "" or (out.endswith("\n") and not out.endswith("\n\n"))
    assert "\n\n\n" not in out and not out.startswith("\n")
    assert all(line == line.rstrip() for line in out.split("\n"))


@FUZZ
@given(disturbed_exports())
def test_cosmetic_disturbances_never_change_the_hash(pair):
    clean, disturbed = pair
    DRIVER.validate(disturbed)  # coloured, re-wrapped, CRLF: still a configuration
    out = DRIVER.normalize(disturbed)
    assert out == DRIVER.normalize(clean)
    assert sha256_hex(out) == sha256_hex(DRIVER.normalize(clean))
    tidy(out)
    assert "by RouterOS" not in out and "\\\n    " not in out  # no header, no wrapping
    assert DRIVER.normalize(out) == out  # idempotent


@FUZZ
@given(st.sampled_from(CAPTURES), st.data())
def test_a_real_change_anywhere_changes_the_hash(capture, data):
    text = capture.export
    lines = text.split("\n")
    candidates = [i for i, line in enumerate(lines) if line.startswith(("add ", "set "))]
    index = data.draw(st.sampled_from(candidates))
    changed = "\n".join(lines[:index] + [lines[index] + " comment=fuzz"] + lines[index + 1:])
    assert sha256_hex(DRIVER.normalize(changed)) != sha256_hex(DRIVER.normalize(text))


device_bytes = st.one_of(
    st.binary(max_size=600),
    st.lists(st.sampled_from([b"/interface bridge\r\n", b"add name=x\r\n", b"\x1b[1m", b"\\\r\n",
                              b"\x00", b"\xff\xfe", b"# 2024-01-01 by RouterOS 7.1\r\n",
                              b"expected end of command", b"\r", b"   "]), max_size=30)
    .map(b"".join),
)


@FUZZ
@given(device_bytes)
def test_any_device_output_is_a_snapshot_or_invalid_output(data):
    """What the collector does with an export's bytes: never anything but InvalidOutput."""
    text = decode_output(data)
    try:
        DRIVER.validate(text)
    except InvalidOutput as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 200
        return
    out = DRIVER.normalize(text)
    tidy(out)
    DRIVER.parse_version(text)


# -- inventory -------------------------------------------------------------------------------

anything = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                     st.text(max_size=40), st.binary(max_size=20),
                     st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                          st.integers(), max_size=2))
addresses = st.one_of(st.text(max_size=50), st.ip_addresses().map(str),
                      st.ip_addresses().map(lambda a: f"{a}/{32 if a.version == 4 else 128}"),
                      st.sampled_from(["10.0.0.1/24", "10.0.0.1/", "/32", "host.example/8",
                                       "::ffff:10.0.0.1", "fe80::1%eth0", " 10.0.0.1 ", "1e3"]))
pg_rows = st.tuples(
    st.uuids().map(str),                                     # id (a uuid column)
    st.one_of(st.none(), st.uuids().map(str)),               # tenant_id
    st.one_of(st.none(), st.text(max_size=30)),              # hostname
    st.one_of(st.none(), addresses),                         # ip_address::text
    st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)),  # ssh_port
    st.one_of(st.none(), st.binary(max_size=80)),            # encrypted_credentials
    st.one_of(st.none(), st.text(max_size=30), st.just("vault:v1:abc"), st.just("  ")),
    st.one_of(st.none(), st.text(max_size=12)),              # routeros_version
    st.one_of(st.none(), st.text(max_size=60),
              st.from_regex(r"SHA256:[A-Za-z0-9+/]{43}=?", fullmatch=True)),
    st.one_of(st.none(), st.booleans(), anything),           # ssh_legacy_algorithms (optional)
)


@settings(max_examples=400, deadline=None)
@given(st.lists(pg_rows, max_size=8))
def test_postgres_rows_never_raise_and_each_lands_once(rows):
    inventory = Inventory()
    for row in rows:
        _add_row(inventory, row)
    assert len(inventory.devices) + len(inventory.errors) + len(inventory.skipped) == len(rows)
    for line in inventory.errors + inventory.skipped:
        assert line.startswith("devices row (id ") and "\n" not in line
    for device in inventory.devices:
        assert device.host == device.host.strip() and 1 <= device.port <= 65535
        assert device.credentials.present and device.tenant_id
        fp = device.host_key_fingerprint
        assert fp is None or re.fullmatch(r"SHA256:[A-Za-z0-9+/]{43}", fp)
        assert device.credentials.transit is None or device.credentials.transit.startswith("vault:v")


@settings(max_examples=300, deadline=None)
@given(anything)
def test_field_parsers_raise_only_value_error(value):
    for parse in (parse_uuid, parse_host, parse_db_address, parse_port, parse_fingerprint,
                  lambda v: optional_text(v, "hostname")):
        try:
            parse(value)
        except ValueError as exc:
            assert "\n" not in str(exc) and len(str(exc)) < 300


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=10))
def test_host_key_sidecar_is_used_or_refused_loudly(document):
    """A damaged sidecar must fail with ConfigError, never re-trust keys silently."""
    try:
        entries = _entries(json.loads(json.dumps(document)), "hostkeys.json")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert all(isinstance(e["fingerprint"], str) for e in entries.values())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_inventory_row_lines_stay_one_line_whatever_the_id(text):
    from ray_backup.inventory.yamlfile import parse_inventory

    parsed = parse_inventory({"devices": [{"id": text, "host": text, "username": text}]},
                             f"/x/{uuid.uuid4()}.yaml")
    for line in parsed.errors:
        assert "\n" not in line and "\r" not in line, line


def test_pty_line_endings_hash_as_exec_ones():
    """A pty turns "\r\n" into "\r\r\n" (onlcr); that must not double-space the config."""
    text = CAPTURES[0].export
    assert DRIVER.normalize(text.replace("\n", "\r\r\n")) == DRIVER.normalize(text)
    assert DRIVER.normalize(text.replace("\n", "\r\n")) == DRIVER.normalize(text)
