"""The snapshot event: what every sink publishes (DESIGN.md, "Snapshot event")."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone


@dataclass(frozen=True, repr=False)
class Snapshot:
    """One normalized configuration of one device, ready to publish."""

    device_id: str
    tenant_id: str
    collected_at: str
    sha256_hash: str
    config_text: str
    normalization_version: int
    routeros_version: str | None = None

    def __repr__(self) -> str:  # never the config text: it holds the device's secrets
        return f"Snapshot(device_id={self.device_id!r}, sha256_hash={self.sha256_hash[:12]!r})"

    def to_event(self) -> dict:
        """The event's JSON object, with exactly the contract's fields."""
        event = {
            "device_id": self.device_id,
            "tenant_id": self.tenant_id,
            "collected_at": self.collected_at,
            "sha256_hash": self.sha256_hash,
            "config_text": self.config_text,
            "normalization_version": self.normalization_version,
        }
        if self.routeros_version:
            event["routeros_version"] = self.routeros_version
        return event

    def to_json_bytes(self) -> bytes:
        return json.dumps(self.to_event(), ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_event(cls, event: dict) -> Snapshot:
        return cls(
            device_id=event["device_id"],
            tenant_id=event["tenant_id"],
            collected_at=event["collected_at"],
            sha256_hash=event["sha256_hash"],
            config_text=event["config_text"],
            normalization_version=int(event["normalization_version"]),
            routeros_version=event.get("routeros_version"),
        )


def rfc3339_now() -> str:
    """Current UTC time as RFC 3339 with a Z suffix, second precision (as the reference)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
