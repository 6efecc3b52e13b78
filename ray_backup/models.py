"""Plain data passed between the parts: devices, credentials, state and results.

Nothing here holds a secret in a form that reaches a repr, a log line or a Ray
task argument: a ``Device`` carries only ciphertext or a reference to where the
password can be read, and ``Credentials`` hides its password from ``repr``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

from ray_backup import constants as C


@dataclass(frozen=True, repr=False)
class CredentialRef:
    """Where a device's credentials come from, without their plaintext.

    Exactly one source is set: Transit ciphertext (``vault:v1:…``), the legacy
    AES-256-GCM blob, or an inventory file in which the password is looked up by
    device id when needed (so a plaintext password never travels through Ray).
    """

    transit: str | None = None
    legacy: bytes | None = None
    inventory_file: str | None = None
    username: str | None = None
    key_file: str | None = None
    digest: str = ""

    @property
    def present(self) -> bool:
        return bool(self.transit or self.legacy or self.inventory_file)

    def __repr__(self) -> str:
        source = (
            "transit" if self.transit else "legacy" if self.legacy
            else "file" if self.inventory_file else "none"
        )
        return f"CredentialRef({source}, digest={self.digest[:8]})"


def secret_digest(*parts: str | bytes | None) -> str:
    """A short digest of credential material, for change detection only."""
    h = hashlib.blake2b(digest_size=12, person=b"ray-backup-cred")
    for part in parts:
        if part is None:
            part = b""
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass(frozen=True, repr=False)
class Credentials:
    """Decrypted login credentials; lives only inside the process that uses it."""

    username: str
    password: str | None = None
    key_file: str | None = None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


@dataclass(frozen=True)
class Device:
    """One inventory row, as the job needs it."""

    id: str
    host: str
    port: int = 22
    tenant_id: str = "00000000-0000-0000-0000-000000000000"
    hostname: str | None = None
    routeros_version: str | None = None
    host_key_fingerprint: str | None = None
    credentials: CredentialRef = field(default_factory=CredentialRef)
    driver: str = "routeros"
    # May negotiate the legacy SSH algorithms (RouterOS 6); see transport/algorithms.py.
    ssh_legacy_algorithms: bool = False

    @property
    def actor_name(self) -> str:
        return f"{C.DEVICE_ACTOR_PREFIX}{self.id}"

    @property
    def block_revision(self) -> str:
        """What must change for a blocked device to be retried."""
        return f"{self.credentials.digest}|{self.host_key_fingerprint or ''}"

    def label(self) -> str:
        name = f" ({self.hostname})" if self.hostname else ""
        return f"{self.id}{name} {self.host}:{self.port}"


@dataclass
class DeviceState:
    """One device's scheduling state; persisted so a restarted actor resumes."""

    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_status: str = C.STATUS_PENDING
    last_error: str = ""
    last_error_kind: str = ""
    consecutive_failures: int = 0
    backoff_until: float = 0.0
    blocked_revision: str = ""
    last_hash: str = ""
    next_due: float | None = None
    # The key the device showed at its last host_key_mismatch: `ray-backup hostkey accept`'s default.
    presented_fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class BackupResult:
    """The outcome of one backup attempt of one device."""

    device_id: str
    status: str
    sha256_hash: str | None = None
    error_kind: str | None = None
    error: str | None = None
    duration_s: float = 0.0
    collected_at: str | None = None
    presented_fingerprint: str | None = None  # set with host_key_mismatch

    @property
    def ok(self) -> bool:
        return self.status == C.STATUS_SUCCESS

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "status": self.status,
            "sha256_hash": self.sha256_hash,
            "error_kind": self.error_kind,
            "error": self.error,
            "duration_s": round(self.duration_s, 3),
        }
