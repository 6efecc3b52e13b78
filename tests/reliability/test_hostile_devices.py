"""Hostile and broken devices in one mixed fleet: each is classified, bounded in time and
memory, and does not slow down the healthy devices backed up at the same moment.

The fleet runs as the device loops of one actor process would (one collector, one
coordinator, the real semaphore class, ``DeviceLoop.tick``), over real SSH to the
simulator plus two raw TCP servers. Per-fault classification alone is in
``tests/integration/test_collect.py::test_each_device_fault_is_classified``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml

from ray_backup import constants as C
from ray_backup import errors
from ray_backup.coordination.local import LocalCoordinator
from ray_backup.drivers.base import sha256_hex
from ray_backup.drivers.routeros import DRIVER
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.simulator import FAULTS, SimDevice, Simulator, make_fleet, write_inventory_yaml
from ray_backup.simulator.fleet import DEFAULT_PASSWORD, pad_config
from ray_backup.sinks.directory import DirectorySink
from tests.reliability import harness

CONNECT_S = 4.0
COMMAND_S = 5.0
CAP = 1 << 20  # CONFIG_BACKUP_MAX_OUTPUT_BYTES for this fleet
SLACK_S = 2.5  # a loaded CI machine
HEALTHY = 6


class AnsiDevice(SimDevice):
    """Exports arrive coloured, with cursor probes, as when a terminal was allocated."""

    def export_bytes(self, *, sensitive: bool, terse: bool = False) -> bytes:
        data = super().export_bytes(sensitive=sensitive, terse=terse)
        coloured = re.sub(rb"(?m)^(/[^\r\n]*)", b"\x1b[1;36m\\1\x1b[0m", data)
        coloured = re.sub(rb"(?m)^(add [^\r\n]*)", b"\x1b[32m\\1\x1b[m\x1b[K", coloured)
        return b"\x1b[?25l\x1b[9999B\x1b[6n" + coloured + b"\x1b[?25h"


class RawServer:
    """A TCP listener that does one hostile thing to every client (not SSH at all)."""

    def __init__(self, behaviour) -> None:
        self._behaviour = behaviour
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self._behaviour(conn, self._stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()


def flood_without_newline(conn: socket.socket, stop: threading.Event) -> None:
    """Endless bytes before any SSH banner, never a line end."""
    chunk = b"\xff" * 65536
    while not stop.is_set():
        conn.sendall(chunk)


@pytest.fixture
def mixed_fleet(tmp_path):
    """Every simulator fault once, a coloured and an oversized export, a pre-banner flood,
    and healthy RouterOS 6 and 7 devices; returns (simulator, devices by id, kind by id)."""
    seed = uuid.uuid4().int % 10**9
    sims = make_fleet(len(FAULTS) + HEALTHY, seed=seed, versions=("7.16", "6.49.10"),
                      faults={fault: 1 for fault in FAULTS})
    for sim in sims:
        sim.huge_bytes = 512 << 20  # endless, as far as a 1 MiB cap is concerned
    ansi = AnsiDevice(id=str(uuid.uuid4()), name="ansi", password=DEFAULT_PASSWORD)
    oversized = SimDevice(id=str(uuid.uuid4()), name="oversized", password=DEFAULT_PASSWORD)
    pad_config(oversized, 3 * CAP)  # a real, valid configuration past the cap
    sims += [ansi, oversized]
    kinds = {s.id: s.fault or "healthy" for s in sims}
    kinds[ansi.id], kinds[oversized.id] = "ansi", "oversized"
    flood = RawServer(flood_without_newline)
    simulator = Simulator(sims).start()
    try:
        path = write_inventory_yaml(tmp_path / "fleet.yaml", sims)
        rows = yaml.safe_load(path.read_text())["devices"]
        for row in rows:
            if kinds[row["id"]] == "host_key_change":
                # Pinned to the key it had; the device now shows a new key every time.
                row["ssh_host_key_fingerprint"] = simulator.device(row["id"]).host_key_fingerprint
        flood_id = str(uuid.uuid4())
        rows.append({"id": flood_id, "host": "127.0.0.1", "port": flood.port,
                     "username": "admin", "password": "x", "routeros_version": "7.16"})
        kinds[flood_id] = "flood"
        path.write_text(yaml.safe_dump({"devices": rows}))
        devices = {d.id: d for d in YamlInventory(path).load().devices}
        assert len(devices) == len(kinds)
        yield simulator, devices, kinds
    finally:
        simulator.stop()
        flood.close()


EXPECTED = {
    "healthy": (C.STATUS_SUCCESS, None),
    "ansi": (C.STATUS_SUCCESS, None),
    "wrong_password": (C.STATUS_FAILED, errors.AUTH_FAILED),
    "host_key_change": (C.STATUS_FAILED, errors.HOST_KEY_MISMATCH),
    "stall": (C.STATUS_FAILED, errors.TIMEOUT),
    "silent": (C.STATUS_FAILED, errors.TIMEOUT),
    "flood": (C.STATUS_FAILED, errors.TIMEOUT),
    "disconnect": (C.STATUS_FAILED, errors.TRUNCATED_OUTPUT),
    "huge": (C.STATUS_FAILED, errors.TRUNCATED_OUTPUT),
    "oversized": (C.STATUS_FAILED, errors.TRUNCATED_OUTPUT),
    "refuse": (C.STATUS_FAILED, errors.CONNECTION_REFUSED),
    "empty": (C.STATUS_FAILED, errors.INVALID_OUTPUT),
    "non_config": (C.STATUS_FAILED, errors.INVALID_OUTPUT),
    "garbage": (C.STATUS_FAILED, errors.INVALID_OUTPUT),
}

# How long each may take: its own timeout, never anyone else's.
BOUND_S = {
    "stall": COMMAND_S + 1,  # the command timeout, then up to 1 s for an exit status
    "silent": CONNECT_S + 1,  # start_client waits the banner timeout + 1 s
    "flood": CONNECT_S + 1,
}
FAST_S = 2.0  # everything else fails (or succeeds) at once


def test_mixed_fleet_each_fault_classified_bounded_and_isolated(mixed_fleet, tmp_path):
    simulator, devices, kinds = mixed_fleet
    assert set(kinds.values()) == set(EXPECTED)
    sink = DirectorySink(tmp_path / "out")
    coordinator = LocalCoordinator()
    permits = harness.LocalPermits(limit=64)  # room for all: isolation, not queueing, is tested
    fleet = harness.fleet(
        list(devices.values()),
        harness.collector(sink, connect_timeout=CONNECT_S, command_timeout=COMMAND_S,
                          max_output_bytes=CAP),
        coordinator, permits=permits,
    )
    done = fleet.round()

    got = {i: (t.result.status, t.result.error_kind) for i, t in done.items()}
    assert got == {i: EXPECTED[kinds[i]] for i in devices}, {
        kinds[i]: (got[i], done[i].result.error) for i in devices if got[i] != EXPECTED[kinds[i]]}
    slow = {kinds[i]: round(t.wall_s, 2) for i, t in done.items()
            if t.wall_s > BOUND_S.get(kinds[i], FAST_S) + SLACK_S}
    assert not slow, f"took longer than their own timeout allows: {slow}"
    healthy = [t.wall_s for i, t in done.items() if kinds[i] in ("healthy", "ansi")]
    assert max(healthy) < FAST_S, f"healthy devices held up by hostile ones: {sorted(healthy)}"

    secrets = [sim.secret for sim in simulator.devices] + [DEFAULT_PASSWORD]
    for t in done.values():
        error = t.result.error or ""
        assert "\n" not in error and len(error) <= 300
        assert not any(secret in error for secret in secrets), error
    # Nothing held afterwards, nothing published for a failed device.
    assert permits.semaphore.stats()["held"] == 0 and coordinator._locks == {}
    published = {p.stem for p in (tmp_path / "out").glob("*.rsc")}
    assert published == {i for i, k in kinds.items() if k in ("healthy", "ansi")}


def test_a_black_holed_site_does_not_hold_up_the_rest(tmp_path):
    """Many devices hang at once (a site behind a dead link): the healthy ones in the same
    process still finish at their normal speed, and every hung one at its own timeout."""
    sims = make_fleet(20, seed=uuid.uuid4().int % 10**9, faults={"silent": 7, "stall": 7})
    with Simulator(sims) as simulator:
        path = write_inventory_yaml(tmp_path / "fleet.yaml", sims)
        devices = YamlInventory(path).load().devices
        fleet = harness.fleet(
            devices,
            harness.collector(DirectorySink(tmp_path / "out"), connect_timeout=CONNECT_S,
                              command_timeout=COMMAND_S),
            LocalCoordinator(), permits=harness.LocalPermits(limit=64),
        )
        done = fleet.round()
    fault = {d.id: simulator.device(d.id).fault for d in devices}
    healthy = sorted(round(t.wall_s, 2) for i, t in done.items() if fault[i] is None)
    assert all(done[i].result.ok for i in fault if fault[i] is None)
    assert healthy[-1] < FAST_S, f"healthy devices waited for hung ones: {healthy}"
    hung = {i: t.wall_s for i, t in done.items() if fault[i] is not None}
    assert all(done[i].result.error_kind == errors.TIMEOUT for i in hung)
    late = {i: round(w, 2) for i, w in hung.items() if w > BOUND_S[fault[i]] + SLACK_S}
    assert not late, f"hung devices waited for each other: {late}"


def test_coloured_export_hashes_as_the_plain_one(mixed_fleet, tmp_path):
    simulator, devices, kinds = mixed_fleet
    ansi_id = next(i for i, k in kinds.items() if k == "ansi")
    sink = DirectorySink(tmp_path / "out")
    fleet = harness.fleet([devices[ansi_id]], harness.collector(sink), LocalCoordinator())
    result = fleet.round()[ansi_id].result
    assert result.ok, result
    plain = SimDevice.export_bytes(simulator.device(ansi_id), sensitive=True).decode()
    assert result.sha256_hash == sha256_hex(DRIVER.normalize(plain))
    assert "\x1b" not in sink.config_path(ansi_id).read_text()


@pytest.fixture
def simulator_process(tmp_path):
    """A simulated fleet in its own process, so this process's memory is the client's alone."""
    started = []

    def start(*args: str) -> Path:
        inventory = tmp_path / f"fleet-{len(started)}.yaml"
        process = subprocess.Popen(
            [sys.executable, "-m", "ray_backup.simulator", "--inventory", str(inventory), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        started.append(process)
        assert process.stdout.readline().startswith("ready"), "simulator did not start"
        return inventory

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=15)


def test_endless_and_oversized_exports_cost_at_most_the_cap(simulator_process, tmp_path):
    """CONFIG_BACKUP_MAX_OUTPUT_BYTES = 2 MiB against a 24 MiB configuration and an endless one."""
    cap = 2 << 20
    inventory = simulator_process("--devices", "2", "--fault", "huge=1",
                                  "--config-bytes", str(24 << 20), "--versions", "7.16")
    devices = YamlInventory(inventory).load().devices
    collector = harness.collector(DirectorySink(tmp_path / "out"), max_output_bytes=cap)
    for device in devices:  # warm up imports and the first connection's allocations
        collector.fetch(device)
    with harness.RssSampler() as rss:
        results = [collector.fetch(device)[0] for device in devices for _ in range(3)]
    for result in results:
        assert result.error_kind == errors.TRUNCATED_OUTPUT, result
        assert f"exceeded the {cap} byte cap" in result.error
        assert result.duration_s < 5
    # One export at a time: raw chunks, their join, the decoded text, the normalized copy.
    assert rss.growth < 5 * cap + 16 * 2**20, f"RSS grew {rss.growth / 2**20:.0f} MiB"
