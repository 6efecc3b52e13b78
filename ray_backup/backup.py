"""One backup of one device: credentials, SSH, validate, normalize, hash, publish.

``Collector.backup`` is blocking and never raises for a device's own failure:
it returns a ``BackupResult`` whose ``error_kind`` is one of the design's kinds.
The actors, the one-shot fleet backup and the benchmarks all call it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ray_backup import constants as C
from ray_backup import errors
from ray_backup.drivers.base import Driver, decode_output, sha256_hex
from ray_backup.drivers.registry import get_driver
from ray_backup.models import BackupResult, Credentials, Device
from ray_backup.snapshot import Snapshot, rfc3339_now
from ray_backup.transport.ssh import SSHOptions, SSHSession

log = logging.getLogger(__name__)

_MAX_ERROR_CHARS = 300


class CredentialSource(Protocol):
    def resolve(self, device: Device) -> Credentials: ...


class SnapshotSink(Protocol):
    def publish(self, snapshot: Snapshot) -> None: ...


# (device id, fingerprint) -> True when that key is now the stored one; raises when not stored.
HostKeyRecorder = Callable[[str, str], bool]
# (device id, fingerprint) after the stored key matched: must be quick and never raise.
HostKeyVerified = Callable[[str, str], None]


@dataclass(frozen=True)
class Collected:
    """What one SSH session brought back."""

    raw: str
    version: str | None
    fingerprint: str | None


@dataclass(frozen=True)
class Fetched:
    """A snapshot taken over SSH, not yet published."""

    snapshot: Snapshot
    started: float


@dataclass
class Collector:
    """Runs the backup pipeline for any device; shared by all loops in a process."""

    credentials: CredentialSource
    sink: SnapshotSink
    options: SSHOptions
    export_mode: str = "show-sensitive"
    record_host_key: HostKeyRecorder | None = None
    host_key_verified: HostKeyVerified | None = None

    def backup(self, device: Device) -> tuple[BackupResult, Device]:
        """Back up ``device``; return the result and the device as now known
        (with a newly trusted host key or a detected version)."""
        fetched, device = self.fetch(device)
        if isinstance(fetched, BackupResult):
            return fetched, device
        return self.deliver(fetched), device

    def fetch(self, device: Device) -> tuple[Fetched | BackupResult, Device]:
        """The SSH half: credentials, export, validation, normalization, hash.

        Returns the snapshot to deliver, or the failed result."""
        started = time.monotonic()
        try:
            snapshot, device = self._fetch(device)
        except Exception as exc:  # every failure becomes a result, never a crash
            return self._failed(device, exc, started), device
        return Fetched(snapshot, started), device

    def deliver(self, fetched: Fetched) -> BackupResult:
        """The publishing half; a success only once the sink has accepted the snapshot."""
        snapshot = fetched.snapshot
        try:
            self.sink.publish(snapshot)
        except Exception as exc:
            if not isinstance(exc, errors.RayBackupError):
                exc = errors.PublishFailed(f"{type(exc).__name__}: {exc}")
            return self._failed_id(snapshot.device_id, exc, fetched.started)
        return BackupResult(
            device_id=snapshot.device_id,
            status=C.STATUS_SUCCESS,
            sha256_hash=snapshot.sha256_hash,
            duration_s=time.monotonic() - fetched.started,
            collected_at=snapshot.collected_at,
        )

    def _fetch(self, device: Device) -> tuple[Snapshot, Device]:
        driver = get_driver(device.driver)
        creds = self.credentials.resolve(device)
        collected = self.collect(device, creds, driver)
        device = self._check_host_key(device, collected.fingerprint)
        if collected.version and collected.version != device.routeros_version:
            device = replace(device, routeros_version=collected.version)
        driver.validate(collected.raw)
        normalized = driver.normalize(collected.raw)
        if not normalized.strip():
            raise errors.InvalidOutput("nothing left after normalization")
        snapshot = Snapshot(
            device_id=device.id,
            tenant_id=device.tenant_id,
            collected_at=rfc3339_now(),
            sha256_hash=sha256_hex(normalized),
            config_text=normalized,
            normalization_version=driver.normalization_version,
            routeros_version=device.routeros_version,
        )
        return snapshot, device

    def collect(self, device: Device, creds: Credentials, driver: Driver) -> Collected:
        """Log in, find the version if unknown, run the export.

        The inventory's version can be stale (the device was upgraded or downgraded).
        The export's header names the real release, or, when the export was refused,
        the version command does; if that release wants another export command, the
        export runs again with it rather than failing or silently dropping secrets.
        """
        session = SSHSession(
            device.host, device.port, creds, device.host_key_fingerprint, self.options,
            legacy_algorithms=device.ssh_legacy_algorithms,
        )
        try:
            with session as ssh:
                return self._export(ssh, device, driver)
        except errors.HostKeyMismatch as exc:
            exc.presented = exc.presented or session.fingerprint  # for `hostkey accept`
            raise

    def _export(self, ssh: SSHSession, device: Device, driver: Driver) -> Collected:
        def probe() -> str | None:
            return driver.parse_version(decode_output(ssh.run(driver.version_command)))

        version = device.routeros_version or probe()
        command = driver.export_command(version, self.export_mode)
        raw = decode_output(ssh.run(command))
        actual = driver.parse_version(raw)
        if actual is None and driver.reject_reason(raw) is not None and device.routeros_version:
            actual = probe()
        if actual and driver.export_command(actual, self.export_mode) != command:
            log.info("device %s: runs %s, not %s as recorded", device.id, actual, version)
            raw = decode_output(ssh.run(driver.export_command(actual, self.export_mode)))
        return Collected(raw=raw, version=actual or version, fingerprint=ssh.fingerprint)

    def _check_host_key(self, device: Device, fingerprint: str | None) -> Device:
        """The device as now known: a first-seen key pinned, or the stored key noted as verified.

        The SSH session already refused a key other than the stored one."""
        if not fingerprint:
            return device
        if device.host_key_fingerprint is not None:
            if self.host_key_verified is not None:
                self.host_key_verified(device.id, fingerprint)
            return device
        self._trust(device, fingerprint)
        return replace(device, host_key_fingerprint=fingerprint)

    def _trust(self, device: Device, fingerprint: str) -> None:
        """Pin a first-seen key before anything is published, or fail the backup.

        A key that could not be stored is not trusted: backing up through it would
        let the next session accept any key again. A store that already holds
        another key (a concurrent first use elsewhere won) is a mismatch.
        """
        if self.record_host_key is None:  # nothing to pin to (benchmarks, tests)
            log.info("device %s: host key %s trusted for this backup only", device.id, fingerprint)
            return
        try:
            stored = self.record_host_key(device.id, fingerprint)
        except Exception as exc:
            raise errors.HostKeyNotStored(
                f"host key {fingerprint} seen for the first time but not stored "
                f"({type(exc).__name__}: {str(exc)[:120]}); not trusted, nothing published"
            ) from None
        if not stored:
            raise errors.HostKeyMismatch(
                f"host key changed: a different key was stored for this device first "
                f"(a concurrent first use), device presented {fingerprint}",
                presented=fingerprint,
            )
        log.info("device %s: trusting host key %s on first use", device.id, fingerprint)

    def _failed(self, device: Device, exc: BaseException, started: float) -> BackupResult:
        return self._failed_id(device.id, exc, started)

    @staticmethod
    def _failed_id(device_id: str, exc: BaseException, started: float) -> BackupResult:
        kind = errors.kind_of(exc)
        if kind == errors.UNKNOWN and not isinstance(exc, errors.RayBackupError):
            log.error("device %s: unexpected error during backup", device_id, exc_info=exc)
        message = str(exc) or type(exc).__name__
        if len(message) > _MAX_ERROR_CHARS:
            message = message[: _MAX_ERROR_CHARS - 1] + "…"
        return BackupResult(
            device_id=device_id,
            status=C.STATUS_FAILED,
            error_kind=kind,
            error=message,
            duration_s=time.monotonic() - started,
            presented_fingerprint=exc.presented if isinstance(exc, errors.HostKeyMismatch) else None,
        )
