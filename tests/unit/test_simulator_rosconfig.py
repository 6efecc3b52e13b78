"""The simulator's RouterOS text logic, checked against the real captures."""

from __future__ import annotations

import datetime as dt

import pytest

from ray_backup.simulator import SimDevice, available_captures, load_capture, make_fleet
from ray_backup.simulator.captures import capture_for_version, unescape
from ray_backup.simulator.commands import respond
from ray_backup.simulator.rosconfig import (
    header_date,
    hide_sensitive,
    insert_lines,
    split_entries,
    strip_header,
    unwrap,
    wrap,
)
from ray_backup.simulator.session import login_name

# Oxidized masked some values of this capture with shorter ones, after RouterOS had
# wrapped the lines, so those few lines no longer wrap where RouterOS would.
MASKED_CAPTURES = {"L009UiGS_7.15.2"}
NOW = dt.datetime(2024, 1, 2, 11, 7, 28)


def test_unescape():
    assert unescape(r"\x20   port-cost-mode=short") == "    port-cost-mode=short"
    assert unescape(r"name=bridge \\") == "name=bridge \\"
    assert unescape(r"list=\"office\"") == 'list="office"'
    assert unescape(r"a\nb\r\e[0m") == "a\nb\r\x1b[0m"
    assert unescape("location=Rīga \\x41") == "location=Rīga A"


@pytest.mark.parametrize("name", available_captures())
def test_captures_load_as_real_exports(name):
    capture = load_capture(name)
    export = capture.export
    assert export.startswith("# ") and f" by RouterOS {capture.version}\n" in export
    assert {"software id", "model", "serial number"} <= set(capture.header_fields)
    assert capture.body[0].startswith("/")
    assert all("\\x20" not in entry and '\\"' not in entry for entry in capture.body)
    assert "version: " in capture.commands["/system resource print"]


def test_the_list_shaped_capture_loads():
    capture = load_capture("RB5009UPrplusSplus_7.18.2")
    assert "# poe-out status: voltage_on_poe-in" in capture.body


@pytest.mark.parametrize("name", sorted(set(available_captures()) - MASKED_CAPTURES))
def test_wrap_reproduces_routeros_wrapping(name):
    for entry in load_capture(name).body:
        assert wrap(unwrap(entry)) == entry


def test_wrap_breaks_after_equals_or_between_properties():
    line = 'add action=drop chain=input comment="defconf: drop invalid" connection-state=invalid'
    assert wrap(line) == (
        'add action=drop chain=input comment="defconf: drop invalid" connection-state=\\\n    invalid'
    )
    assert wrap("set name=short") == "set name=short"


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("7.16", "2024-01-02 11:07:28"),
        ("7.10.1", "2024-01-02 11:07:28"),
        ("7.9.2", "jan/02/2024 11:07:28"),
        ("6.49.10", "jan/02/2024 11:07:28"),
    ],
)
def test_header_date_format_follows_the_release(version, expected):
    assert header_date(version, NOW) == expected


def test_strip_header_and_split_entries():
    text = "# 2024-10-25 06:08:35 by RouterOS 7.16\n# software id = X\n#\n# model = Y\n/ip dns\nset a=\\\n    b\n"
    assert split_entries(strip_header(text)) == ["/ip dns", "set a=\\\n    b"]


def test_hide_sensitive_drops_secret_properties_and_rewraps():
    entry = wrap(
        "add add-default-route=yes disabled=no interface=vlan6 name=pppoe-out1 password=password use-peer-dns=yes user=user"
    )
    assert "\\\n" in entry
    assert hide_sensitive(entry) == (
        "add add-default-route=yes disabled=no interface=vlan6 name=pppoe-out1 \\\n    use-peer-dns=yes user=user"
    )
    assert hide_sensitive("add name=x") == "add name=x"


def test_insert_lines_puts_new_sections_where_routeros_prints_them():
    entries = [
        "/interface list",
        "add name=WAN",
        "/ip address",
        "add address=1.2.3.4/24",
        "/snmp",
        "set a=b",
        "/system note",
        "set show-at-login=no",
        "/tool mac-server",
        "set x=y",
    ]
    insert_lines(entries, "/ppp secret", ["add name=u password=p"])
    insert_lines(entries, "/system identity", ["set name=r1"])
    insert_lines(entries, "/ip address", ["add address=5.6.7.8/24"])
    assert entries == [
        "/interface list",
        "add name=WAN",
        "/ip address",
        "add address=1.2.3.4/24",
        "add address=5.6.7.8/24",
        "/ppp secret",
        "add name=u password=p",
        "/snmp",
        "set a=b",
        "/system identity",
        "set name=r1",
        "/system note",
        "set show-at-login=no",
        "/tool mac-server",
        "set x=y",
    ]


@pytest.mark.parametrize(
    ("username", "login"),
    [
        ("admin", "admin"),
        ("admin+ct", "admin"),
        ("admin+cte", "admin"),
        ("admin+ct200w", "admin"),
        ("admin+t", "admin"),
        ("admin+", "admin"),
        ("ad+min+c", "ad+min"),
    ],
)
def test_login_name_strips_terminal_options(username, login):
    assert login_name(username) == login


def test_capture_for_version():
    assert capture_for_version("7.16") == "CHR_7.16"
    assert capture_for_version("7.17") == "CHR_7.16"  # newest older capture
    assert capture_for_version("6.49.10").startswith("synthetic-")


def test_command_errors_read_like_routeros():
    v6, v7 = SimDevice(routeros_version="6.49.10"), SimDevice()
    assert (
        respond(v6, "/export show-sensitive").data
        == b"expected end of command (line 1 column 9)\r\n"
    )
    assert (
        respond(v7, "/system frobnicate").data
        == b"bad command name frobnicate (line 1 column 9)\r\n"
    )
    assert (
        respond(v7, "/export verbose nonsense").data
        == b"expected end of command (line 1 column 17)\r\n"
    )
    assert respond(v7, "").data == b""


def test_secrets_follow_the_release_defaults():
    v6, v7 = SimDevice(routeros_version="6.49.10"), SimDevice()
    assert v6.secret.encode() in respond(v6, "/export").data
    assert v6.secret.encode() not in respond(v6, "/export hide-sensitive").data
    assert v7.secret.encode() not in respond(v7, "/export").data
    assert v7.secret.encode() in respond(v7, "/export show-sensitive").data


def test_mutate_and_reset():
    device = SimDevice(name="R1")
    before = device.config_text()
    device.mutate()
    assert device.config_text() != before and "comment=changed-1" in device.config_text()
    device.reset_config()
    assert device.config_text() == before


def test_make_fleet_is_deterministic_and_places_faults():
    fleet = make_fleet(50, seed=4, faults={"stall": 3, "refuse": 2})
    again = make_fleet(50, seed=4, faults={"stall": 3, "refuse": 2})
    assert [(d.id, d.fault) for d in fleet] == [(d.id, d.fault) for d in again]
    assert (
        sum(d.fault == "stall" for d in fleet) == 3 and sum(d.fault == "refuse" for d in fleet) == 2
    )
    assert [d.id for d in make_fleet(50, seed=5)] != [d.id for d in fleet]
    with pytest.raises(ValueError):
        make_fleet(2, faults={"stall": 3})
    with pytest.raises(ValueError):
        make_fleet(2, faults={"bogus": 1})


@pytest.mark.parametrize("size", [20_000, 200_000])
def test_config_bytes_pads_the_export(size):
    for device in make_fleet(5, config_bytes=size):
        exported = len(device.export_bytes(sensitive=True))
        assert size <= exported < size + 100
