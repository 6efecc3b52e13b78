"""The fleet a benchmark backs up: simulated devices in their own process, their
inventory and stored host keys, and inventories of devices nothing answers for."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import psutil
import yaml

from benchlib.common import REPO, clean_env


class FleetProcess:
    """A fleet of SSH devices served by a child process, so its CPU is its own.

    The child prints ``ready …`` once every device listens and has written the YAML
    inventory, answers ``stats`` with a JSON line and stops on ``quit``. Use as a context
    manager; ``rows`` are the inventory rows (with ports) and ``inventory`` the YAML file
    ray-backup reads.
    """

    kind = "?"

    def __init__(self, devices: int, inventory: Path, argv: list[str], timeout: float) -> None:
        self.n = devices
        self.inventory = inventory
        self.argv = argv
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.rows: list[dict] = []
        self._io = threading.Lock()

    def __enter__(self) -> FleetProcess:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=clean_env())
        try:
            line = _readline(self.proc, self.timeout)
            if not line.startswith("ready"):
                raise RuntimeError(f"{self.kind} fleet did not start: {line!r}")
            self.rows = yaml.safe_load(self.inventory.read_text())["devices"]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict:
        with self._io:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            return json.loads(_readline(self.proc, 30))

    def cpu_seconds(self) -> float:
        """The fleet process's CPU so far, read from outside (no round trip through it)."""
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


class SimFleet(FleetProcess):
    """``python -m ray_backup.simulator``: our simulator (paramiko). ``delay_applies_to``
    ``"export"`` delays only exports; ``"all"`` every command line, also each line typed
    into a shell (what inflated Nornir's times, which types ~9 lines per backup)."""

    kind = "simulator"

    def __init__(self, devices: int, workdir: str | os.PathLike, *, delay: float = 0.0,
                 config_bytes: int | None = None, seed: int = 0, timeout: float = 600.0,
                 delay_applies_to: str = "all") -> None:
        inventory = Path(workdir) / f"fleet-{devices}.yaml"
        argv = [sys.executable, "-m", "ray_backup.simulator", "--devices", str(devices),
                "--inventory", str(inventory), "--delay", str(delay), "--seed", str(seed),
                "--delay-applies-to", delay_applies_to]
        if config_bytes:
            argv += ["--config-bytes", str(config_bytes)]
        super().__init__(devices, inventory, argv, timeout)


class IndependentFleet(FleetProcess):
    """asyncssh servers we did not write (``tests/support/independent_ssh.py``), one port
    per device, in one process; the delay applies to exports only."""

    kind = "independent"

    def __init__(self, devices: int, workdir: str | os.PathLike, *, delay: float = 0.0,
                 config_bytes: int | None = None, seed: int = 0, timeout: float = 600.0,
                 profile: str = "modern") -> None:
        inventory = Path(workdir) / f"independent-{devices}.yaml"
        argv = [sys.executable, str(Path(__file__).with_name("independent_fleet.py")),
                "--devices", str(devices), "--inventory", str(inventory), "--delay", str(delay),
                "--seed", str(seed), "--profile", profile]
        if config_bytes:
            argv += ["--config-bytes", str(config_bytes)]
        super().__init__(devices, inventory, argv, timeout)


FLEETS = ("simulator", "independent")


def open_fleet(kind: str, devices: int, workdir: str | os.PathLike, *, delay: float,
               config_bytes: int | None, delay_applies_to: str = "export") -> FleetProcess:
    """The fleet ``kind`` (simulator or independent); the independent servers delay
    exports only, whatever ``delay_applies_to`` says."""
    if kind == "independent":
        return IndependentFleet(devices, workdir, delay=delay, config_bytes=config_bytes)
    return SimFleet(devices, workdir, delay=delay, config_bytes=config_bytes,
                    delay_applies_to=delay_applies_to)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line from ``proc``, or an error when it exits or takes too long."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise TimeoutError(f"no answer from pid {proc.pid} within {timeout:g} s")
    if not box[0]:
        raise RuntimeError(f"pid {proc.pid} exited ({proc.poll()})")
    return box[0].strip()


def write_fingerprints(inventory: Path, rows: Sequence[dict], workers: int = 10) -> int:
    """Store every device's host key in the inventory's sidecar, as after a first backup.

    The benchmarks measure the steady state (keys known); trust on first use is a
    one-time cost per device that ``fleet_sweep --first-use`` measures on its own.
    """
    from concurrent.futures import ThreadPoolExecutor

    import paramiko

    from ray_backup.transport.ssh import fingerprint

    def scan(row: dict) -> tuple[str, str]:
        transport = paramiko.Transport((row["host"], row["port"]))
        try:
            transport.start_client(timeout=30)
            return row["id"], fingerprint(transport.get_remote_server_key())
        finally:
            transport.close()

    with ThreadPoolExecutor(workers) as pool:
        keys = dict(pool.map(scan, rows))
    sidecar = Path(f"{inventory}.hostkeys.json")
    sidecar.write_text(json.dumps({k: {"fingerprint": v} for k, v in keys.items()}, indent=1))
    return len(keys)


def export_command(row: dict) -> str:
    """The command ray-backup's driver runs for this row (v6 has no show-sensitive)."""
    from ray_backup.drivers.routeros import export_command as routeros_export

    return routeros_export(row.get("routeros_version"), "show-sensitive")


def write_inventory(path: str | os.PathLike, n: int, seed: int = 0, port_base: int = 20_000) -> list[dict]:
    """A YAML inventory of ``n`` devices that nothing answers for (127.0.0.1, unused
    ports): for benchmarks during which no backup runs (start-up, memory, placement)."""
    from ray_backup.simulator.fleet import DEFAULT_PASSWORD, DEFAULT_TENANT, device_id

    rows = [{"id": device_id(seed, i), "tenant_id": DEFAULT_TENANT, "hostname": f"bench-{i:05d}",
             "host": "127.0.0.1", "port": port_base + i % 40_000, "username": "admin",
             "password": DEFAULT_PASSWORD, "routeros_version": "7.16"} for i in range(n)]
    Path(path).write_text(yaml.safe_dump({"devices": rows}, sort_keys=False))
    return rows
