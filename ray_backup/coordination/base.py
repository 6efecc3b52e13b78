"""The coordination seam: online gating, per-device locks and persisted device state.

A ``Coordinator`` never lets its own outage stop backups (DESIGN.md: a Redis
error counts as online, and backups go on): methods do not raise for a backend
that is down, they degrade and log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ray_backup.models import DeviceState
from ray_backup.settings import Settings

if TYPE_CHECKING:
    from typing_extensions import Self


@runtime_checkable
class Lock(Protocol):
    """A held per-device lock. Releasing never removes a lock someone else now holds."""

    device_id: str

    def release(self) -> None:
        """Give the lock back; idempotent, never raises."""

    def renew(self) -> bool:
        """Reset the lock's TTL while we still hold it (token-checked); False if it is
        no longer ours. Never raises."""

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


@runtime_checkable
class Coordinator(Protocol):
    def is_online(self, device_id: str) -> bool:
        """False only when the device is known to be offline."""

    def acquire_lock(self, device_id: str, ttl_s: float) -> Lock | None:
        """The device's lock for ``ttl_s`` seconds, or None if someone else holds it."""

    def load_state(self, device_id: str) -> DeviceState | None:
        """The device's persisted state, or None if there is none (or it cannot be read)."""

    def save_state(self, device_id: str, state: DeviceState) -> None:
        """Persist the device's state (later, if the backend is down right now)."""

    def delete_state(self, device_id: str) -> None:
        """Forget a removed device's state."""

    def close(self) -> None:
        """Release connections; idempotent."""


class LockBase:
    """Context-manager plumbing shared by the lock implementations."""

    device_id: str

    def release(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class UnenforcedLock(LockBase):
    """Stands in for a lock when the lock service is down: backups go on unlocked."""

    held = False

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id

    def __repr__(self) -> str:
        return f"UnenforcedLock({self.device_id!r})"

    def release(self) -> None:
        pass

    def renew(self) -> bool:
        return True


def open_coordinator(settings: Settings) -> Coordinator:
    """Redis when ``REDIS_URL`` is set, else in-process coordination for a single job."""
    if settings.redis_url:
        from ray_backup.coordination.redis import RedisCoordinator

        return RedisCoordinator(settings.redis_url, settings.redis_prefix)
    from ray_backup.coordination.local import LocalCoordinator

    return LocalCoordinator()
