"""The shapes shared by the history stores, the writers and the views.

A store keeps every *distinct* configuration of a device (a new version only when
the hash differs from the device's newest one), the unified diff between
consecutive versions and a per-section summary of each diff. Two implementations:
PostgreSQL (tables compatible with the-other-dude's) and a plain directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal, Protocol

from ray_backup.errors import PUBLISH_FAILED, RayBackupError
from ray_backup.snapshot import Snapshot


class HistoryLookupError(RayBackupError, LookupError):
    """A device or snapshot reference that matches nothing, or more than one thing."""


class HistoryRejected(RayBackupError, ValueError):
    """A snapshot the store refuses for good (its tenant is not the device's, the device
    is unknown to a database that requires it); the message names the device.
    Retrying cannot help: a writer logs it and moves on."""

    kind = PUBLISH_FAILED


class HistoryUnavailable(RayBackupError, ConnectionError):
    """The store cannot be reached now (database down, connection lost); retry later.
    Nothing was stored: a writer keeps the message and its offset."""

    kind = PUBLISH_FAILED


@dataclass(frozen=True)
class SectionChange:
    """One RouterOS section's part of a diff: ``ip/firewall/filter``, "Added 2 filter rules"."""

    component: str
    summary: str
    raw_line: str = ""  # one changed line of the section, secret values masked

    def to_json(self) -> dict:
        return {"component": self.component, "summary": self.summary}

    @classmethod
    def from_json(cls, data: dict) -> SectionChange:
        return cls(data["component"], data["summary"], data.get("raw_line") or "")


@dataclass(frozen=True)
class Version:
    """One distinct configuration of a device (no config text: views ask the store for it)."""

    snapshot_id: str
    device_id: str
    tenant_id: str | None
    sha256_hash: str
    collected_at: str  # RFC 3339, UTC
    lines_added: int | None = None  # None for a device's first version
    lines_removed: int | None = None
    sections: tuple[SectionChange, ...] = ()

    def to_json(self) -> dict:
        """One line of `ray-backup history --json`."""
        return {
            "snapshot_id": self.snapshot_id,
            "device_id": self.device_id,
            "collected_at": self.collected_at,
            "sha256_hash": self.sha256_hash,
            "lines_added": self.lines_added,
            "lines_removed": self.lines_removed,
            "sections": [s.to_json() for s in self.sections],
        }


@dataclass(frozen=True)
class ChangeEvent:
    """What goes to ``config.changes`` (key = device id): ids, hashes, counts, sections.

    Never config text or secret lines."""

    device_id: str
    tenant_id: str | None
    old_snapshot_id: str
    new_snapshot_id: str
    old_sha256_hash: str
    new_sha256_hash: str
    collected_at: str
    lines_added: int
    lines_removed: int
    sections: tuple[SectionChange, ...] = field(default_factory=tuple)

    def to_event(self) -> dict:
        event = asdict(self)
        event["sections"] = [s.to_json() for s in self.sections]
        return event

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_event(), separators=(",", ":")).encode()


@dataclass(frozen=True)
class Stored:
    """What ``HistoryStore.store`` did with one snapshot.

    ``new``: a new version (``change`` set when there was a previous one);
    ``duplicate``: same hash as the device's newest version, nothing stored;
    ``stale``: older than the device's newest version, ignored (never a reversed diff).
    """

    outcome: Literal["new", "duplicate", "stale"]
    version: Version | None = None
    change: ChangeEvent | None = None


class HistoryStore(Protocol):
    """Versions of every device. Thread-safe; ``store`` is idempotent and serialized per device."""

    def store(self, snapshot: Snapshot) -> Stored: ...

    def versions(self, device_id: str, limit: int | None = None) -> list[Version]:
        """Newest first."""

    def text(self, device_id: str, snapshot_id: str | None = None) -> str:
        """A version's normalized configuration, decrypted, secrets *not* masked (default newest)."""

    def resolve(self, device_id: str, ref: str) -> str:
        """A full snapshot id from an id or a unique prefix of at least 8 characters."""

    def diff(self, device_id: str, old_id: str, new_id: str) -> str:
        """Unified diff (3 lines of context) from ``old_id`` to ``new_id``, secrets not masked."""

    def latest(self) -> list[tuple[str, str]]:
        """(device_id, snapshot_id) of every device's newest version, for fleet-wide search."""

    def prune(self, retention_days: float) -> int:
        """Delete versions older than the retention, never a device's newest; return how many."""

    def close(self) -> None: ...


class ChangeSink(Protocol):
    """Where change events go: Kafka ``config.changes`` or ``<output>/changes.jsonl``."""

    def publish_change(self, change: ChangeEvent) -> None: ...

    def close(self) -> None: ...
