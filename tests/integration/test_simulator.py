"""The RouterOS simulator over real SSH on loopback, with paramiko as the client."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest
import yaml

from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.simulator import (
    SimDevice,
    Simulator,
    load_capture,
    make_fleet,
    write_inventory_yaml,
)
from ray_backup.simulator.captures import available_captures

PASSWORD = "test-password"
ISO_HEADER = re.compile(rb"\A# (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) by RouterOS (\S+)\r\n")
V6_HEADER = re.compile(rb"\A# ([a-z]{3})/(\d\d)/(\d{4}) (\d\d:\d\d:\d\d) by RouterOS (\S+)\r\n")
CAPTURE_VERSIONS = {load_capture(name).version: name for name in available_captures()}
CLIENT_KEY = paramiko.ECDSAKey.generate()
EXPORT_DELAY = 2.0


def _device(name: str, **kw: object) -> SimDevice:
    kw.setdefault("routeros_version", "7.16")
    return SimDevice(name=name, password=PASSWORD, **kw)


DEVICES = {
    **{
        f"v{version}": _device(f"R-{version}", routeros_version=version)
        for version in CAPTURE_VERSIONS
    },
    "v6": _device("Old Router", routeros_version="6.49.10"),
    "mutable": _device("Mutable"),
    "settable": _device("Settable", routeros_version="6.49.10"),
    "rotating": _device("Rotating"),
    "slow": _device("Slow", delay=0.3),
    # Long enough that an undelayed answer cannot reach it even on a loaded machine.
    "slow_export": _device("SlowExport", delay=EXPORT_DELAY, delay_applies_to="export"),
    "pubkey": _device(
        "Keyed", authorized_key=f"{CLIENT_KEY.get_name()} {CLIENT_KEY.get_base64()} test@sim"
    ),
    "own_address": _device("Elsewhere", host="127.0.0.2"),
    **{
        fault: _device(f"F-{fault}", fault=fault)
        for fault in (
            "wrong_password",
            "host_key_change",
            "stall",
            "disconnect",
            "empty",
            "non_config",
            "garbage",
            "silent",
            "refuse",
        )
    },
    "huge": _device("F-huge", fault="huge", huge_bytes=16 * 1024 * 1024),
}


@pytest.fixture(scope="module")
def sim():
    with Simulator(DEVICES.values()) as simulator:
        yield simulator


def connect(
    device: SimDevice, username: str = "admin", password: str = PASSWORD, **kw
) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    kw.setdefault("timeout", 5)
    client.connect(
        device.host,
        device.port,
        username=username,
        password=password,
        look_for_keys=False,
        allow_agent=False,
        banner_timeout=5,
        auth_timeout=5,
        **kw,
    )
    return client


def run(device: SimDevice, command: str, **kw) -> tuple[bytes, int]:
    client = connect(device, **kw)
    try:
        _, stdout, _ = client.exec_command(command, timeout=10)
        data = stdout.read()
        return data, stdout.channel.recv_exit_status()
    finally:
        client.close()


def body_lines(export: bytes) -> list[str]:
    """Export lines after the header block, LF."""
    lines = export.decode().split("\r\n")
    start = next(i for i, line in enumerate(lines) if not line.startswith("#"))
    return lines[start:]


def is_subsequence(needle: list[str], haystack: list[str]) -> bool:
    it = iter(haystack)
    return all(any(line == candidate for candidate in it) for line in needle)


# -- exports ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(CAPTURE_VERSIONS))
def test_v7_show_sensitive_is_the_capture_with_a_fresh_header(sim, version):
    device = DEVICES[f"v{version}"]
    data, status = run(device, "/export show-sensitive")
    assert status == 0
    header = ISO_HEADER.match(data)
    assert header and header.group(2).decode() == version
    stamp = dt.datetime.strptime(header.group(1).decode(), "%Y-%m-%d %H:%M:%S")
    assert abs((dt.datetime.now() - stamp).total_seconds()) < 120
    assert data.count(b"\n") == data.count(b"\r\n") and data.endswith(b"\r\n")
    text = data.decode()
    assert "# software id = " in text and "# model = " in text and "# serial number = " in text
    capture_body = load_capture(CAPTURE_VERSIONS[version]).body
    assert is_subsequence(
        [line for entry in capture_body for line in entry.split("\n") if "set name=" not in line],
        body_lines(data),
    )
    assert device.secret in text
    assert "/system identity\r\nset name=" in text


def test_v7_plain_and_hide_sensitive_exports_omit_secrets(sim):
    device = DEVICES["v7.15.2"]
    for command in ("/export", "/export hide-sensitive"):
        data, status = run(device, command)
        assert status == 0 and ISO_HEADER.match(data)
        assert b"SIMSECRET" not in data and b"password=" not in data
        assert b"/ppp secret" in data


def test_v6_rejects_show_sensitive_and_exports_with_secrets(sim):
    device = DEVICES["v6"]
    data, status = run(device, "/export show-sensitive")
    assert (data, status) == (b"expected end of command (line 1 column 9)\r\n", 0)

    data, status = run(device, "/export")
    header = V6_HEADER.match(data)
    assert status == 0 and header and header.group(5) == b"6.49.10"
    assert header.group(1).decode() == dt.datetime.now().strftime("%b").lower()
    assert device.secret.encode() in data and b"wpa2-pre-shared-key=" in data

    hidden, _ = run(device, "/export hide-sensitive")
    assert (
        V6_HEADER.match(hidden)
        and b"SIMSECRET" not in hidden
        and b"wpa2-pre-shared-key" not in hidden
    )


@pytest.mark.parametrize(
    ("key", "version"), [("v6", "6.49.10"), ("v7.16", "7.16"), ("v7.18.2", "7.18.2")]
)
def test_resource_print_reports_the_device_version(sim, key, version):
    data, _ = run(DEVICES[key], "/system resource print")
    assert re.search(
        rf"^ +version: {re.escape(version)} \((stable|long-term)\)", data.decode(), re.MULTILINE
    )
    packages, _ = run(DEVICES[key], "/system package update print")
    assert f"installed-version: {version}" in packages.decode()


def test_unknown_command_is_a_routeros_error(sim):
    assert (
        run(DEVICES["v7.16"], "/frobnicate")[0]
        == b"bad command name frobnicate (line 1 column 2)\r\n"
    )


def test_own_loopback_address(sim):
    device = DEVICES["own_address"]
    assert device.host == "127.0.0.2"
    assert ISO_HEADER.match(run(device, "/export show-sensitive")[0])


# -- authentication and host keys -----------------------------------------------------------


@pytest.mark.parametrize("username", ["admin+ct", "admin+cte", "admin+ct200w", "admin+t"])
def test_terminal_suffixes_on_the_username_log_in(sim, username):
    data, _ = run(DEVICES["v7.16"], "/system identity print", username=username)
    assert data == b"  name: R-7.16\r\n"


def test_wrong_password_fails_authentication(sim):
    before = sim.stats.auth_failures
    with pytest.raises(paramiko.AuthenticationException):
        connect(DEVICES["v7.16"], password="nope")
    with pytest.raises(paramiko.AuthenticationException):
        connect(DEVICES["wrong_password"])  # the right password, a device that rejects all
    assert sim.stats.auth_failures >= before + 2


def test_public_key_authentication(sim):
    device = DEVICES["pubkey"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        device.host,
        device.port,
        username="admin",
        pkey=CLIENT_KEY,
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
    )
    try:
        _, stdout, _ = client.exec_command("/system identity print")
        assert stdout.read() == b"  name: Keyed\r\n"
    finally:
        client.close()


def served_key(device: SimDevice) -> paramiko.PKey:
    client = connect(device)
    try:
        return client.get_transport().get_remote_server_key()
    finally:
        client.close()


def test_host_key_change_fault_serves_a_new_key_each_connection(sim):
    device = DEVICES["host_key_change"]
    assert served_key(device).asbytes() != served_key(device).asbytes()


def test_rotate_host_key_at_run_time(sim):
    device = DEVICES["rotating"]
    first = served_key(device)
    assert first.asbytes() == served_key(device).asbytes() == device.host_key.asbytes()
    digest = base64.b64encode(hashlib.sha256(first.asbytes()).digest()).decode().rstrip("=")
    assert device.host_key_fingerprint == f"SHA256:{digest}"
    device.rotate_host_key()
    assert served_key(device).asbytes() != first.asbytes()


# -- shell, changes, delay ------------------------------------------------------------------


def read_until(channel: paramiko.Channel, marker: bytes, timeout: float = 5) -> bytes:
    data, deadline = b"", time.monotonic() + timeout
    channel.settimeout(0.2)
    while marker not in data and time.monotonic() < deadline:
        try:
            chunk = channel.recv(65536)
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return data


def test_shell_prompt_and_commands(sim):
    client = connect(DEVICES["v7.16"], username="admin+ct")
    try:
        shell = client.invoke_shell()
        prompt = b"[admin@R-7.16] > "
        greeting = read_until(shell, prompt)
        assert b"MikroTik RouterOS 7.16" in greeting and greeting.endswith(prompt)
        shell.send(b"/system resource print\r\n")
        answer = read_until(shell, prompt)
        assert b"version: 7.16 (stable)" in answer and answer.endswith(prompt)
        shell.send(b"/export\r")
        export = read_until(shell, b"\r\n" + prompt)
        assert b"by RouterOS 7.16\r\n" in export and b"/system note\r\n" in export
        shell.send(b"quit\r")
        assert b"interrupted" in read_until(shell, b"interrupted")
        shell.settimeout(5)
        assert shell.recv(100) == b"" and shell.recv_exit_status() == 0
    finally:
        client.close()


def test_mutate_changes_the_next_export(sim):
    device = DEVICES["mutable"]
    first, _ = run(device, "/export show-sensitive")
    again, _ = run(device, "/export show-sensitive")
    assert body_lines(first) == body_lines(again)
    assert device.mutate() == 1
    changed, _ = run(device, "/export show-sensitive")
    assert body_lines(changed) != body_lines(first)
    assert "comment=changed-1" in changed.decode()


def test_set_config_replaces_the_configuration(sim):
    device = DEVICES["settable"]
    device.set_config(
        "# jan/01/2020 00:00:00 by RouterOS 6.49.10\n/system identity\nset name=replaced\n"
    )
    data, _ = run(device, "/export")
    assert V6_HEADER.match(data) and body_lines(data) == [
        "/system identity",
        "set name=replaced",
        "",
    ]


def test_delay_before_each_answer(sim):
    client = connect(DEVICES["slow"])
    try:
        started = time.monotonic()
        _, stdout, _ = client.exec_command("/system identity print")
        assert stdout.read() == b"  name: Slow\r\n"
        assert time.monotonic() - started >= 0.3
    finally:
        client.close()


def timed(client: paramiko.SSHClient, command: str) -> tuple[bytes, float]:
    started = time.monotonic()
    _, stdout, _ = client.exec_command(command)
    return stdout.read(), time.monotonic() - started


def test_delay_applied_to_exports_only(sim):
    client = connect(DEVICES["slow_export"])
    try:
        answer, fast = timed(client, "/system identity print")
        assert answer == b"  name: SlowExport\r\n" and fast < EXPORT_DELAY
        export, slow = timed(client, "/export show-sensitive")
        assert b"by RouterOS 7.16\r\n" in export and slow >= EXPORT_DELAY
    finally:
        client.close()


def test_delay_for_exports_only_answers_typed_lines_at_once(sim):
    """What Netmiko does in the shell: empty lines and prompt probes, then the export."""
    client = connect(DEVICES["slow_export"])
    try:
        shell = client.invoke_shell()
        prompt = b"[admin@SlowExport] > "
        read_until(shell, prompt)
        started = time.monotonic()
        for _ in range(3):
            shell.send(b"\r\n")
            assert read_until(shell, prompt).endswith(prompt)
        assert time.monotonic() - started < EXPORT_DELAY
        shell.send(b"/export\r\n")
        export = read_until(shell, b"\r\n" + prompt, timeout=EXPORT_DELAY + 5)
        assert b"by RouterOS 7.16\r\n" in export
        assert time.monotonic() - started >= EXPORT_DELAY
    finally:
        client.close()


def test_delay_scope_is_checked_and_reaches_the_fleet_and_command_line():
    with pytest.raises(ValueError, match="delay scope"):
        SimDevice(delay=1, delay_applies_to="every-other-line")
    fleet = make_fleet(2, delay=0.5, delay_applies_to="export")
    assert [(d.delay, d.delay_applies_to) for d in fleet] == [(0.5, "export")] * 2
    assert make_fleet(1, delay=0.5)[0].delay_applies_to == "all"  # the old behaviour by default
    from ray_backup.simulator.__main__ import parse_args

    args = parse_args(["--devices", "1", "--delay", "0.5", "--delay-applies-to", "export"])
    assert args.delay_applies_to == "export"
    assert parse_args(["--devices", "1"]).delay_applies_to == "all"


# -- faults ---------------------------------------------------------------------------------


def exec_channel(device: SimDevice, command: str = "/export show-sensitive", **kw):
    client = connect(device, **kw)
    _, stdout, _ = client.exec_command(command)
    return client, stdout.channel


def test_stall_sends_part_then_nothing_with_the_connection_open(sim):
    device = DEVICES["stall"]
    full = len(device.export_bytes(sensitive=True))
    client, channel = exec_channel(device)
    try:
        channel.settimeout(2)
        received = b""
        with pytest.raises(socket.timeout):
            while True:
                chunk = channel.recv(65536)
                assert chunk, "stalled device closed the channel"
                received += chunk
        assert 0 < len(received) < full
        assert not channel.closed and client.get_transport().is_active()
    finally:
        client.close()


def test_stalled_device_still_answers_other_commands(sim):
    assert b"version: 7.16" in run(DEVICES["stall"], "/system resource print")[0]


def test_disconnect_drops_the_connection_mid_output(sim):
    device = DEVICES["disconnect"]
    full = len(device.export_bytes(sensitive=True))
    client, channel = exec_channel(device)
    try:
        channel.settimeout(5)
        received = b""
        while chunk := channel.recv(65536):
            received += chunk
        assert 0 < len(received) < full
        assert channel.recv_exit_status() == -1  # no exit status: the connection just died
    finally:
        client.close()


def test_empty_output(sim):
    assert run(DEVICES["empty"], "/export show-sensitive") == (b"", 0)


def test_non_config_output(sim):
    data, status = run(DEVICES["non_config"], "/export show-sensitive")
    assert status == 0 and data
    assert not re.search(rb"^/[a-z]", data, re.MULTILINE)
    assert b"bad command name" in data or b"\x1b[" in data


def test_garbage_output(sim):
    data, status = run(DEVICES["garbage"], "/export show-sensitive")
    assert status == 0 and len(data) >= 4096
    assert sum(byte < 9 for byte in data) > len(data) // 100


def test_huge_output_streams_past_any_cap(sim):
    cap = 4 * 1024 * 1024
    client, channel = exec_channel(DEVICES["huge"])
    try:
        channel.settimeout(5)
        received = 0
        while received <= cap:
            chunk = channel.recv(1 << 20)
            assert chunk
            received += len(chunk)
        assert received > cap
    finally:
        client.close()  # the device stops streaming when the client goes


def test_silent_accepts_tcp_but_sends_no_banner(sim):
    device = DEVICES["silent"]
    with socket.create_connection((device.host, device.port), timeout=2) as sock:
        sock.settimeout(1)
        with pytest.raises(socket.timeout):
            sock.recv(100)


def test_refuse_has_no_listener(sim):
    device = DEVICES["refuse"]
    assert device.port
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((device.host, device.port), timeout=2)


def test_stats_count_the_work(sim):
    run(DEVICES["v7.16"], "/export")
    stats = sim.stats
    assert stats.connections > 0 and stats.commands > 0 and stats.exports > 0
    assert stats.bytes_sent > 1000 and stats.auth_failures >= 0
    assert Simulator.cpu_seconds() > 0


# -- scale, lifecycle, inventory ------------------------------------------------------------


def sim_threads(before: set[threading.Thread]) -> list[str]:
    return [t.name for t in threading.enumerate() if t not in before and t.name.startswith("sim-")]


def test_two_hundred_devices_start_fast_and_stop_cleanly():
    before = set(threading.enumerate())
    devices = make_fleet(200, seed=7, faults={"stall": 2})
    started = time.monotonic()
    simulator = Simulator(devices).start()
    try:
        assert time.monotonic() - started < 5
        assert len({d.port for d in devices}) == 200
        for device in (devices[0], devices[99], devices[199]):
            data, status = run(device, "/export", password="sim-password")
            assert status == 0 and data.startswith(b"# ")
        stalled = next(d for d in devices if d.fault == "stall")
        client, _ = exec_channel(
            stalled, password="sim-password"
        )  # left hanging: stop() must still end it
    finally:
        simulator.stop()
    client.close()
    assert sim_threads(before) == []


def test_inventory_yaml_describes_the_fleet(tmp_path: Path):
    devices = make_fleet(6, seed=3, faults={"refuse": 1, "wrong_password": 1})
    assert [d.id for d in devices] == [d.id for d in make_fleet(6, seed=3)]
    with Simulator(devices):
        path = write_inventory_yaml(tmp_path / "fleet.yaml", devices)
        rows = yaml.safe_load(path.read_text())["devices"]
        assert [row["id"] for row in rows] == [d.id for d in devices]
        assert [row["hostname"] for row in rows] == [d.name for d in devices]
        loaded = YamlInventory(path).load()  # the project's own reader accepts it
        assert [(d.id, d.port) for d in loaded.devices] == [(d.id, d.port) for d in devices]
        assert set(rows[0]) == {
            "id",
            "tenant_id",
            "hostname",
            "host",
            "port",
            "username",
            "password",
            "routeros_version",
        }
        assert [row["routeros_version"] for row in rows[:5]] == [
            "7.16",
            "7.15.2",
            "7.10.1",
            "7.18.2",
            "6.49.10",
        ]
        for row, device in zip(rows, devices, strict=True):
            target = SimDevice(id=row["id"], host=row["host"], port=row["port"])
            if device.fault == "refuse":
                with pytest.raises(ConnectionRefusedError):
                    socket.create_connection((row["host"], row["port"]), timeout=2)
            elif device.fault == "wrong_password":
                with pytest.raises(paramiko.AuthenticationException):
                    connect(target, username=row["username"], password=row["password"])
            else:
                assert run(target, "/export", password=row["password"])[1] == 0


def start_subprocess(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    inventory = tmp_path / "inventory.yaml"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ray_backup.simulator",
            "--devices",
            "5",
            "--inventory",
            str(inventory),
            *args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout.readline().strip() == "ready 5 devices"
    return process, inventory


def test_subprocess_mode_control_lines(tmp_path: Path):
    process, inventory = start_subprocess(tmp_path, "--seed", "1", "--config-bytes", "20000")
    try:
        rows = yaml.safe_load(inventory.read_text())["devices"]
        assert len(rows) == 5
        target = SimDevice(host=rows[0]["host"], port=rows[0]["port"])
        before, _ = run(target, "/export show-sensitive", password=rows[0]["password"])
        assert 19000 < len(before) < 21000
        process.stdin.write("mutate all\n")
        process.stdin.flush()
        assert process.stdout.readline().strip() == "ok mutate 5"
        after, _ = run(target, "/export show-sensitive", password=rows[0]["password"])
        assert body_lines(after) != body_lines(before)
        process.stdin.write("stats\n")
        process.stdin.flush()
        stats = json.loads(process.stdout.readline())
        assert stats["cpu_seconds"] > 0 and stats["connections"] == 2 and stats["exports"] == 2
        process.stdin.write("quit\n")
        process.stdin.flush()
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()


def test_subprocess_mode_stops_on_sigterm(tmp_path: Path):
    process, _ = start_subprocess(tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
