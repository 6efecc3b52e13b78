"""Build reproducible fleets of simulated devices and their YAML inventory."""

from __future__ import annotations

import bisect
import functools
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

from ray_backup.simulator.device import FAULTS, SimDevice

DEFAULT_VERSIONS = ("7.16", "7.15.2", "7.10.1", "7.18.2", "6.49.10")
DEFAULT_PASSWORD = "sim-password"
DEFAULT_TENANT = "00000000-0000-0000-0000-000000000000"
# Fixed namespace so that (seed, index) always names the same device.
_FLEET_NAMESPACE = uuid.UUID("6f1c2a52-6a53-4c1e-9d0e-52a7c3b1e0f4")
_FILL_SECTION = "/ip firewall address-list"


def device_id(seed: int, index: int) -> str:
    return str(uuid.uuid5(_FLEET_NAMESPACE, f"{seed}:{index}"))


def make_fleet(
    n: int,
    *,
    seed: int = 0,
    versions: Sequence[str] = DEFAULT_VERSIONS,
    faults: Mapping[str, int] | None = None,
    config_bytes: int | None = None,
    delay: float = 0.0,
    delay_applies_to: str = "all",
    password: str = DEFAULT_PASSWORD,
    username: str = "admin",
    name_prefix: str = "sim",
) -> list[SimDevice]:
    """``n`` devices with deterministic ids, names ``sim-0000``…, versions taken in
    turn from ``versions``, ``faults`` (kind → count) spread over random devices
    (seeded), exports padded to about ``config_bytes`` when given, and ``delay``
    seconds before every answer, or before exports only (``delay_applies_to="export"``)."""
    kinds = _fault_plan(n, faults or {}, random.Random(seed))
    devices = [
        SimDevice(
            id=device_id(seed, i),
            name=f"{name_prefix}-{i:04d}",
            username=username,
            password=password,
            routeros_version=versions[i % len(versions)],
            delay=delay,
            delay_applies_to=delay_applies_to,
            fault=kinds.get(i),
        )
        for i in range(n)
    ]
    if config_bytes:
        for device in devices:
            pad_config(device, config_bytes)
    return devices


def _fault_plan(n: int, faults: Mapping[str, int], rng: random.Random) -> dict[int, str]:
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; expected some of {FAULTS}")
    wanted = [kind for kind in sorted(faults) for _ in range(faults[kind])]
    if len(wanted) > n:
        raise ValueError(f"{len(wanted)} faulty devices asked for in a fleet of {n}")
    return dict(zip(rng.sample(range(n), len(wanted)), wanted, strict=True))


def pad_config(device: SimDevice, config_bytes: int) -> None:
    """Grow the device's configuration with address-list entries until its full
    export is about ``config_bytes`` long (the lines are shared between devices)."""
    device.config_lines = ()
    device.reset_config()
    need = config_bytes - len(device.export_bytes(sensitive=True))
    if _FILL_SECTION not in device.config_text().split("\n"):
        need -= len(_FILL_SECTION) + 2
    if need > 0:
        lines, ends = _fill(config_bytes)
        count = bisect.bisect_left(ends, need) + 1
        device.config_lines = [_FILL_SECTION, *lines[:count]]
        device.reset_config()


@functools.lru_cache(maxsize=4)
def _fill(size: int) -> tuple[list[str], list[int]]:
    """Enough address-list lines for ``size`` bytes, and their running CRLF sizes."""
    lines, ends, total, i = [], [], 0, 0
    while total < size:
        line = (
            f"add address=10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} list=sim-fill-{i // 256}"
        )
        total += len(line) + 2
        lines.append(line)
        ends.append(total)
        i += 1
    return lines, ends


def write_inventory_yaml(
    path: str | Path,
    devices: Iterable[SimDevice],
    include_versions: bool = True,
    *,
    tenant_id: str = DEFAULT_TENANT,
) -> Path:
    """Write the project's YAML inventory for ``devices`` (after ``Simulator.start()``,
    which assigns the ports). Passwords are written in clear: test fleets only."""
    rows = []
    for device in devices:
        if not device.port:
            raise ValueError(f"device {device.id} has no port yet: start the simulator first")
        row = {
            "id": device.id,
            "tenant_id": tenant_id,
            "hostname": device.name,
            "host": device.host or "127.0.0.1",
            "port": device.port,
            "username": device.username,
            "password": device.password,
        }
        if include_versions:
            row["routeros_version"] = device.routeros_version
        rows.append(row)
    path = Path(path)
    path.write_text(yaml.safe_dump({"devices": rows}, sort_keys=False), encoding="utf-8")
    return path
