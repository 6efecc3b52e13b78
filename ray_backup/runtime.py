"""What one process needs to back devices up, built once from its settings."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ray_backup import logs
from ray_backup.backup import Collector
from ray_backup.coordination.base import open_coordinator
from ray_backup.credentials.resolver import CredentialResolver, FileLogins
from ray_backup.inventory.base import open_inventory
from ray_backup.inventory.trust import HostKeys, InventoryHostKeys, SupervisorHostKeys, VerifyNotes
from ray_backup.loop import LoopDeps, Permits, Schedule, in_thread
from ray_backup.settings import Settings
from ray_backup.sinks.base import open_sink
from ray_backup.transport.ssh import SSHOptions

log = logging.getLogger(__name__)


class Runtime:
    """Coordinator, sink, credentials and collector for one process.

    Host keys are written through ``host_keys`` (default: the inventory, opened for
    each write: see ``inventory.trust``).
    """

    def __init__(self, settings: Settings, host_keys: HostKeys | None = None,
                 verify_notes: VerifyNotes | None = None,
                 file_logins: FileLogins | None = None) -> None:
        self.settings = settings
        self.coordinator = open_coordinator(settings)
        self.sink = open_sink(settings)
        # A fleet worker's runtimes share ``file_logins``: one parse per inventory change.
        self.credentials = CredentialResolver(settings, file_logins=file_logins)
        self.host_keys = host_keys or InventoryHostKeys(lambda: open_inventory(settings))
        # Shared by a fleet worker's runtimes of one inventory (see ``actors.worker``):
        # their owner closes it.
        self._own_notes = verify_notes is None
        self._verify_notes = verify_notes or VerifyNotes(self.host_keys)
        self.collector = Collector(
            credentials=self.credentials,
            sink=self.sink,
            options=ssh_options(settings),
            export_mode=settings.export_mode,
            record_host_key=self.record_host_key,
            host_key_verified=self._verify_notes,
        )

    def record_host_key(self, device_id: str, fingerprint: str) -> bool:
        """Pin a first-seen key; True when it is now the stored one (see ``Collector._trust``)."""
        return self.host_keys.record(device_id, fingerprint)

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
    async def start(cls, job_member: bool = True) -> Runtime:
        """Settings from this process's environment, logging, then the parts (off the loop:
        opening them does network I/O).

        ``job_member``: a device actor of the running job; with a YAML inventory its
        host keys go to the supervisor, the sidecar's one writer. A one-shot worker
        (False) may read another inventory than the job's, so it writes its own.
        """
        settings = Settings.load()
        logs.setup(settings.log_level)
        host_keys = SupervisorHostKeys() if job_member and settings.inventory_file else None
        return await in_thread(cls, settings, host_keys)

    def close(self) -> None:
        if self._own_notes:
            self._verify_notes.close()
        for part in (self.sink, self.coordinator, self.host_keys):
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


# What a backup may run while it holds its SSH permit (backup.Collector.collect): the
# version probe, the export, and the export again when the release differs from the
# inventory's (or a probe after a refused export, then that export).
COMMANDS_PER_BACKUP = 3
# Before the session: the lock (two Redis round trips at most, 2 s each) and the
# credentials (a Transit decrypt, 5 s); after it, closing; with room for a busy machine.
LEASE_MARGIN_S = 30.0


def lease_seconds(settings: Settings) -> float:
    """The longest a backup can hold its SSH permit.

    Connecting is TCP, the SSH handshake (1 s over the connect timeout) and the login
    (keyboard-interactive after a refused password: two tries), each bounded by the
    connect timeout; every command first opens a channel (the connect timeout) and then
    runs for at most the command timeout.
    """
    connect = settings.connect_timeout + (settings.connect_timeout + 1) + 2 * settings.connect_timeout
    command = settings.connect_timeout + settings.command_timeout
    return connect + COMMANDS_PER_BACKUP * command + LEASE_MARGIN_S


def schedule(settings: Settings) -> Schedule:
    return Schedule(
        interval=settings.backup_interval,
        jitter_min=settings.jitter_min,
        jitter_max=settings.jitter_max,
        # The reference's TTL; the lock is renewed while its backup runs (loop.py).
        lock_ttl=settings.command_timeout + 30,
        lease_s=lease_seconds(settings),
    )
