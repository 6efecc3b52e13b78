"""In-process coordination for a single job without Redis.

Every device is online; locks and state live in this process's memory. Locks
keep Redis's semantics (a TTL, token-safe release) so the backup logic behaves
the same on either backend.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

from ray_backup.coordination.base import LockBase
from ray_backup.models import DeviceState


class LocalLock(LockBase):
    """A lock held in a ``LocalCoordinator``."""

    held = True

    def __init__(self, owner: LocalCoordinator, device_id: str, token: str, ttl_s: float) -> None:
        self.device_id = device_id
        self._owner = owner
        self._token = token
        self._ttl_s = ttl_s

    def __repr__(self) -> str:
        return f"LocalLock({self.device_id!r})"

    def release(self) -> None:
        self._owner._release(self.device_id, self._token)

    def renew(self) -> bool:
        return self._owner._renew(self.device_id, self._token, self._ttl_s)


class LocalCoordinator:
    """Every device online; locks and state in memory (threads of one process)."""

    available = True
    # Its calls never wait on I/O: callers may run them on the event loop (see loop.py).
    blocking = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._mutex = threading.Lock()
        self._locks: dict[str, tuple[str, float]] = {}  # device -> (token, expires at)
        self._states: dict[str, dict] = {}

    def __repr__(self) -> str:
        return "LocalCoordinator()"

    def is_online(self, device_id: str) -> bool:
        return True

    def acquire_lock(self, device_id: str, ttl_s: float) -> LocalLock | None:
        now = self._clock()
        with self._mutex:
            held = self._locks.get(device_id)
            if held is not None and held[1] > now:
                return None
            token = uuid.uuid4().hex
            self._locks[device_id] = (token, now + ttl_s)
        return LocalLock(self, device_id, token, ttl_s)

    def _release(self, device_id: str, token: str) -> None:
        with self._mutex:
            held = self._locks.get(device_id)
            if held is not None and held[0] == token:
                del self._locks[device_id]

    def _renew(self, device_id: str, token: str, ttl_s: float) -> bool:
        now = self._clock()
        with self._mutex:
            held = self._locks.get(device_id)
            # Like Redis: only an unexpired lock with our token is extended.
            if held is None or held[0] != token or held[1] <= now:
                return False
            self._locks[device_id] = (token, now + ttl_s)
            return True

    def load_state(self, device_id: str) -> DeviceState | None:
        with self._mutex:
            data = self._states.get(device_id)
        return None if data is None else DeviceState.from_dict(data)

    def save_state(self, device_id: str, state: DeviceState) -> None:
        data = state.to_dict()  # a copy: later changes to ``state`` are not saved silently
        with self._mutex:
            self._states[device_id] = data

    def delete_state(self, device_id: str) -> None:
        with self._mutex:
            self._states.pop(device_id, None)

    def close(self) -> None:
        pass
