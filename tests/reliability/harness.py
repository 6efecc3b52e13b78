"""Shared helpers of the reliability suite: in-process device loops, memory sampling, leak search.

The suite drives the production code paths (``DeviceLoop.tick`` → ``guarded_backup`` →
``Collector`` → a real sink and coordinator) in the test process, with the real
``SSHSemaphore`` class standing in for its actor, so outages and hostile devices can be
staged precisely. Tests that need the Ray job use ``ray_backup.job`` directly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ray_backup.actors.semaphore import SSHSemaphore
from ray_backup.backup import Collector
from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.loop import DeviceLoop, LoopDeps, Schedule
from ray_backup.models import BackupResult, Device
from ray_backup.settings import Settings
from ray_backup.transport.ssh import SSHOptions

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # base64 of 32 bytes (test key)


class LocalPermits:
    """The real ``SSHSemaphore`` class behind the loop's ``Permits`` seam, without an actor."""

    def __init__(self, limit: int = 64) -> None:
        self.semaphore = SSHSemaphore(limit)

    async def acquire(self, holder: str, lease_s: float) -> str:
        return await self.semaphore.acquire(holder, lease_s)

    async def release(self, lease: str, holder: str) -> None:
        await self.semaphore.release(lease, holder)


def schedule(lock_ttl: float = 60.0, lease_s: float = 120.0) -> Schedule:
    return Schedule(interval=3600, jitter_min=0, jitter_max=0, lock_ttl=lock_ttl, lease_s=lease_s)


def collector(sink, *, settings: Settings | None = None, connect_timeout: float = 3.0,
              command_timeout: float = 4.0, max_output_bytes: int = 1 << 20,
              export_mode: str = "show-sensitive", record_host_key=None) -> Collector:
    settings = settings or Settings.load(environ={"CREDENTIAL_ENCRYPTION_KEY": KEY})
    return Collector(
        credentials=CredentialResolver(settings),
        sink=sink,
        options=SSHOptions(connect_timeout, command_timeout, max_output_bytes),
        export_mode=export_mode,
        record_host_key=record_host_key,
    )


@dataclass
class Timed:
    device: Device
    result: BackupResult
    wall_s: float  # from the start of the round to this device's result


@dataclass
class Fleet:
    """Device loops over one shared collector, coordinator and semaphore (one actor process)."""

    devices: list[Device]
    deps: LoopDeps
    loops: dict[str, DeviceLoop] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for device in self.devices:
            state = self.deps.coordinator.load_state(device.id)
            self.loops[device.id] = DeviceLoop(device, self.deps, state)

    def round(self, ids: Iterable[str] | None = None) -> dict[str, Timed]:
        """One backup of every device (or of ``ids``), all at once, as concurrent ticks."""
        return asyncio.run(self.round_async(ids))

    async def round_async(self, ids: Iterable[str] | None = None) -> dict[str, Timed]:
        chosen = [self.loops[i] for i in (ids if ids is not None else self.loops)]
        start = time.monotonic()

        async def one(loop: DeviceLoop) -> Timed:
            result = await loop.tick(manual=True)
            return Timed(loop.device, result, time.monotonic() - start)

        done = await asyncio.gather(*(one(loop) for loop in chosen))
        return {t.device.id: t for t in done}


def fleet(devices: list[Device], collector: Collector, coordinator, *, permits=None,
          sched: Schedule | None = None) -> Fleet:
    deps = LoopDeps(collector=collector, coordinator=coordinator,
                    permits=permits or LocalPermits(), schedule=sched or schedule())
    return Fleet(list(devices), deps)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler:
    """Peak resident memory of this process while the block runs (sampled every 10 ms)."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @property
    def growth(self) -> int:
        return max(0, self.peak - self.baseline)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssSampler:
        self.baseline = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def find_leaks(haystacks: dict[str, str], needles: dict[str, str]) -> list[str]:
    """Every (needle, place) pair where a secret was found, with a little context."""
    hits = []
    for place, text in haystacks.items():
        for what, needle in needles.items():
            if not needle:
                continue
            at = text.find(needle)
            if at >= 0:
                context = text[max(0, at - 60): at + len(needle) + 20].replace("\n", "⏎")
                hits.append(f"{what} {needle[:40]!r} found in {place}: …{context}…")
    return hits


def read_tree(root: Path) -> dict[str, str]:
    """Every regular file under ``root`` as text (binary files decoded leniently)."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            try:
                out[str(path)] = path.read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
    return out
