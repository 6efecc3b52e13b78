"""Coordination through Redis, shared with the reference scheduler's keys.

- ``device:<id>:status`` (written by the poller): ``online`` or anything else;
  a missing key or any Redis error counts as online.
- ``backup:device:<id>``: the per-device lock, redis-py's ``Lock`` (SET NX PX
  with a random token; release and extension are token-checked Lua scripts).
- ``<prefix>state:<id>``: the device's ``DeviceState`` as JSON.

Redis going away must not stop backups (DESIGN.md). Every call has short
socket timeouts (2 s to connect, 2 s per command, timeouts not retried) and
degrades instead of raising: devices count as online, ``acquire_lock`` returns
an ``UnenforcedLock`` (not None: None means another process holds the lock),
``load_state`` returns None, and ``save_state`` keeps the state in memory and
writes it at the next successful call (latest wins). The outage is logged once
when it starts and once when it ends; ``available`` tells its current state.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import defaultdict

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.retry import Retry

from ray_backup import constants as C
from ray_backup.coordination.base import LockBase, UnenforcedLock
from ray_backup.models import DeviceState

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT_S = 2.0
_DELETE = None  # a pending write that deletes the state
_NOTHING = object()


# Connections one process keeps to Redis, whatever the number of devices it runs: its
# threads wait for a free one. Redis answers in well under a millisecond, so a few serve
# a packed actor's loops; with the few actor processes per node that
# ``placement.auto_layout`` allows, a node stays within its budget (issue 11).
CONNECTIONS_PER_PROCESS = 3
# How long a thread waits for a free connection before the call counts as a Redis
# failure: longer than a socket timeout, since on a busy node (hundreds of loops starting
# at once, a loaded CPU) a queue of sub-millisecond calls is not an outage.
POOL_WAIT_S = 10.0


def client(url: str, socket_timeout: float = SOCKET_TIMEOUT_S,
           max_connections: int = CONNECTIONS_PER_PROCESS) -> redis.Redis:
    """A client that fails fast (short timeouts, text replies), on a capped pool."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=max(socket_timeout, POOL_WAIT_S),
        socket_connect_timeout=socket_timeout,
        socket_timeout=socket_timeout,
        # One immediate retry on a connection error reconnects a pooled connection
        # Redis closed (a restart). Timeouts are not retried and there is no health-check
        # PING (it doubles the wait): a hung Redis costs one socket timeout per call.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.exceptions.ConnectionError,)),
        health_check_interval=0,
        decode_responses=True,
    )
    redis_client = redis.Redis(connection_pool=pool)
    redis_client.auto_close_connection_pool = True
    return redis_client


class RedisLock(LockBase):
    """A held ``backup:device:<id>`` lock."""

    held = True

    def __init__(self, owner: RedisCoordinator, lock: redis.lock.Lock, device_id: str) -> None:
        self.device_id = device_id
        self._owner = owner
        self._lock = lock
        self._released = False

    def __repr__(self) -> str:
        return f"RedisLock({self.device_id!r})"

    def release(self) -> None:
        """Delete the key only if it still holds our token; never raises."""
        if self._released:
            return
        self._released = True
        try:
            self._lock.release()
        except LockNotOwnedError:
            logger.warning("device %s: backup lock expired before release (the backup outlasted "
                           "its TTL); it now belongs to someone else and is left alone",
                           self.device_id)
        except LockError:
            pass
        except RedisError as exc:  # the key expires by its TTL
            self._owner._failed("release lock", exc)

    def renew(self) -> bool:
        """Reset the TTL if the key still holds our token (redis-py's Lua script)."""
        if self._released:
            return False
        try:
            self._lock.reacquire()
        except LockError:  # LockNotOwnedError included: expired, maybe someone else's now
            return False
        except RedisError as exc:  # cannot tell; the next renewal may get through
            self._owner._failed("renew lock", exc)
            return True
        self._owner._succeeded()
        return True


class RedisCoordinator:
    """Online gating, locks and state in Redis; degrades, never blocks, when Redis is down."""

    def __init__(
        self,
        url: str,
        prefix: str = C.DEFAULT_REDIS_PREFIX,
        *,
        socket_timeout: float = SOCKET_TIMEOUT_S,
    ) -> None:
        self.prefix = prefix
        self.available = True
        self._client = client(url, socket_timeout)
        self._mutex = threading.Lock()
        self._pending: dict[str, str | None] = {}  # device -> state JSON, or _DELETE
        self._device_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    def __repr__(self) -> str:
        kw = self._client.connection_pool.connection_kwargs
        where = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"
        return f"RedisCoordinator({where!r}, prefix={self.prefix!r})"

    def state_key(self, device_id: str) -> str:
        return C.DEVICE_STATE_KEY.format(prefix=self.prefix, device_id=device_id)

    # -- the Coordinator protocol ---------------------------------------------

    def is_online(self, device_id: str) -> bool:
        try:
            status = self._client.get(C.DEVICE_STATUS_KEY.format(device_id=device_id))
        except RedisError as exc:
            self._failed("device status", exc)
            return True
        self._succeeded()
        return status is None or status == "online"

    def acquire_lock(self, device_id: str, ttl_s: float) -> LockBase | None:
        lock = self._client.lock(
            C.DEVICE_LOCK_KEY.format(device_id=device_id),
            timeout=ttl_s,
            blocking=False,
            thread_local=False,  # async actors release from another thread than acquired
        )
        try:
            acquired = lock.acquire(blocking=False)
        except RedisError as exc:
            self._failed("lock", exc)
            return UnenforcedLock(device_id)
        self._succeeded()
        return RedisLock(self, lock, device_id) if acquired else None

    def load_state(self, device_id: str) -> DeviceState | None:
        with self._mutex:
            pending = self._pending.get(device_id, _NOTHING)
        if pending is not _NOTHING:  # not yet written, and newer than what Redis holds
            return None if pending is _DELETE else _parse_state(device_id, pending)
        try:
            raw = self._client.get(self.state_key(device_id))
        except RedisError as exc:
            self._failed("load state", exc)
            logger.warning("device %s: state not loaded from Redis; starting from defaults",
                           device_id)
            return None
        self._succeeded()
        return None if raw is None else _parse_state(device_id, raw)

    def save_state(self, device_id: str, state: DeviceState) -> None:
        self._write(device_id, json.dumps(state.to_dict(), separators=(",", ":")))

    def delete_state(self, device_id: str) -> None:
        self._write(device_id, _DELETE)

    def close(self) -> None:
        self._flush_pending()
        with self._mutex:
            left = len(self._pending)
        if left:
            logger.warning("Redis coordinator closed with %d device state(s) unsaved", left)
        self._client.close()

    # -- state writes: latest wins, kept in memory while Redis is down ------------

    def _write(self, device_id: str, data: str | None) -> None:
        with self._mutex:
            self._pending[device_id] = data
        if self._write_pending(device_id):
            self._succeeded()

    def _write_pending(self, device_id: str) -> bool:
        """Write the device's pending state; False (and kept) if Redis is down."""
        with self._mutex:
            device_lock = self._device_locks[device_id]
        with device_lock:  # an older write must not land after a newer one
            with self._mutex:
                if device_id not in self._pending:
                    return True
                data = self._pending[device_id]
            try:
                if data is _DELETE:
                    self._client.delete(self.state_key(device_id))
                else:
                    self._client.set(self.state_key(device_id), data)
            except RedisError as exc:
                self._failed("save state", exc)
                return False
            with self._mutex:
                if self._pending.get(device_id, _NOTHING) is data:  # not replaced meanwhile
                    del self._pending[device_id]
            return True

    def _flush_pending(self) -> None:
        with self._mutex:
            devices = list(self._pending)
        for device_id in devices:
            if not self._write_pending(device_id):
                return
        if devices:
            logger.info("wrote %d device state(s) kept while Redis was unavailable", len(devices))

    # -- outage bookkeeping -------------------------------------------------------

    def _failed(self, what: str, exc: Exception) -> None:
        with self._mutex:
            was_available, self.available = self.available, False
        if was_available:
            logger.warning(
                "Redis unavailable (%s: %s); backups go on: devices count as online, locks are "
                "not enforced, state is kept in memory until Redis is back", what, exc,
            )
        else:
            logger.debug("Redis still unavailable (%s: %s)", what, exc)

    def _succeeded(self) -> None:
        with self._mutex:
            was_available, self.available = self.available, True
            pending = bool(self._pending)
        if not was_available:
            logger.info("Redis available again")
        if pending:
            self._flush_pending()


def _parse_state(device_id: str, raw: str) -> DeviceState | None:
    try:
        return DeviceState.from_dict(json.loads(raw))
    except (TypeError, ValueError) as exc:
        logger.warning("device %s: stored state unreadable (%s); starting from defaults",
                       device_id, exc)
        return None
