"""What one process needs to back devices up, built once from its settings."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ray_backup import logs
from ray_backup.backup import Collector
from ray_backup.coordination.base import open_coordinator
from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.inventory.base import open_inventory
from ray_backup.loop import LoopDeps, Permits, Schedule, in_thread
from ray_backup.settings import Settings
from ray_backup.sinks.base import open_sink
from ray_backup.transport.ssh import SSHOptions

log = logging.getLogger(__name__)


class Runtime:
    """Coordinator, sink, credentials and collector for one process.

    The inventory is opened only when a host key must be written back.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.coordinator = open_coordinator(settings)
        self.sink = open_sink(settings)
        self.credentials = CredentialResolver(settings)
        self._inventory = None
        self._inventory_lock = threading.Lock()
        self.collector = Collector(
            credentials=self.credentials,
            sink=self.sink,
            options=ssh_options(settings),
            export_mode=settings.export_mode,
            record_host_key=self.record_host_key,
        )

    def record_host_key(self, device_id: str, fingerprint: str) -> None:
        with self._inventory_lock:
            if self._inventory is None:
                self._inventory = open_inventory(self.settings)
            self._inventory.record_host_key(device_id, fingerprint)

    def schedule(self) -> Schedule:
        return schedule(self.settings)

    def loop_deps(self, permits: Permits, report: Callable[[dict], object] | None = None) -> LoopDeps:
        """What a device loop (or a one-shot backup) needs, from this process's parts."""
        deps = LoopDeps(
            collector=self.collector, coordinator=self.coordinator,
            permits=permits, schedule=self.schedule(),
        )
        if report is not None:
            deps.report = report
        return deps

    @classmethod
    async def start(cls) -> Runtime:
        """Settings from this process's environment, logging, then the parts (off the loop:
        opening them does network I/O)."""
        settings = Settings.load()
        logs.setup(settings.log_level)
        return await in_thread(cls, settings)

    def close(self) -> None:
        for part in (self.sink, self.coordinator, self._inventory):
            if part is None:
                continue
            try:
                part.close()
            except Exception as exc:
                log.warning("closing %s: %s", type(part).__name__, exc)


def ssh_options(settings: Settings) -> SSHOptions:
    return SSHOptions(
        connect_timeout=settings.connect_timeout,
        command_timeout=settings.command_timeout,
        max_output_bytes=settings.max_output_bytes,
        legacy_algorithms=settings.ssh_legacy_algorithms,
    )


def schedule(settings: Settings) -> Schedule:
    # A backup is bounded by connect + two commands (version probe, export) + publish.
    worst_case = settings.connect_timeout + 2 * settings.command_timeout + 30
    return Schedule(
        interval=settings.backup_interval,
        jitter_min=settings.jitter_min,
        jitter_max=settings.jitter_max,
        lock_ttl=settings.command_timeout + 30,  # the reference's TTL
        lease_s=worst_case,
    )
