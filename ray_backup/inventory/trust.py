"""Who writes trusted host keys, and how a successful key check is noted.

Trust on first use pins a key only once it is stored: ``record`` answers whether the
presented key is now the stored one and raises when it could not be stored.

A YAML inventory's sidecar lives on the supervisor's node. Device actors on other
nodes would each write a sidecar on their own disk, and two first uses could pin two
different keys; so job members ask the supervisor, the one writer
(``SupervisorHostKeys``). PostgreSQL is written directly: its conditional UPDATE
lets the first writer win and tells the others.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from ray_backup import constants as C
from ray_backup.inventory.base import InventorySource

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a device actor waits for the supervisor to store a first-seen key.
SUPERVISOR_TIMEOUT_S = 30.0
# ssh_host_key_last_verified moves at most this often per device: a fleet of
# thousands must not write the inventory on every backup.
VERIFY_EVERY_S = 600.0
# Host-key writes of one process go one at a time: at most one PostgreSQL connection
# per process, whatever the number of devices it runs (a write takes milliseconds).
_ONE_WRITER = threading.Lock()


class HostKeys(Protocol):
    def record(self, device_id: str, fingerprint: str) -> bool:
        """Store a first-seen key; False when another key is already stored."""

    def verified(self, device_id: str, fingerprint: str) -> None:
        """Note that the device just presented its stored key."""

    def close(self) -> None: ...


class InventoryHostKeys:
    """Writes through the inventory, opened for each write and closed again: with one
    device actor per device, a connection kept per process would be one idle PostgreSQL
    connection per device, for a write every few hours."""

    def __init__(self, opener: Callable[[], InventorySource]) -> None:
        self._opener = opener

    def _with_source(self, work: Callable[[InventorySource], T]) -> T:
        with _ONE_WRITER:
            source = self._opener()
            try:
                return work(source)
            finally:
                source.close()

    def record(self, device_id: str, fingerprint: str) -> bool:
        return self._with_source(lambda source: source.record_host_key(device_id, fingerprint))

    def verified(self, device_id: str, fingerprint: str) -> None:
        self._with_source(lambda source: source.mark_verified(device_id))

    def close(self) -> None:
        pass


class SupervisorHostKeys:
    """Asks the job's supervisor to write the YAML sidecar on its node."""

    def __init__(self, timeout_s: float = SUPERVISOR_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s

    def record(self, device_id: str, fingerprint: str) -> bool:
        import ray

        supervisor = ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
        call = supervisor.record_host_key.remote(device_id, fingerprint)
        # Called from a backup's thread: a future, not ray.get, which in an async actor
        # warns about blocking the event loop whatever thread it runs in.
        return bool(call.future().result(timeout=self._timeout_s))

    def verified(self, device_id: str, fingerprint: str) -> None:
        # Storing the key that is already stored moves only last_verified.
        if not self.record(device_id, fingerprint):
            log.info("device %s: stored host key changed meanwhile; not marked verified", device_id)

    def close(self) -> None:
        pass


class VerifyNotes:
    """Notes verified keys in the background, at most once per device per ``every_s``.

    Called on the backup's path, so it only queues; a failed note is logged, never
    raised, and the device is noted again after ``every_s``.
    """

    def __init__(self, host_keys: HostKeys, every_s: float = VERIFY_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._host_keys = host_keys
        self._every_s = every_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ray-backup-verify")

    def __call__(self, device_id: str, fingerprint: str) -> None:
        now = self._clock()
        with self._lock:
            last = self._last.get(device_id)
            if last is not None and now - last < self._every_s:
                return
            self._last[device_id] = now
        try:
            self._pool.submit(self._note, device_id, fingerprint)
        except RuntimeError:  # closing
            pass

    def _note(self, device_id: str, fingerprint: str) -> None:
        try:
            self._host_keys.verified(device_id, fingerprint)
        except Exception as exc:
            log.warning("device %s: could not note the host key as verified: %s", device_id, exc)

    def close(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
