"""Where the SSH semaphore keeps its granted leases, so a restart does not forget them.

The semaphore actor holds its leases in memory; Ray restarts it with an empty memory
while the holders are still logged in to their devices. With Redis (``REDIS_URL``)
each lease is written to the hash ``<prefix>semaphore:leases`` before its holder gets
it and deleted when it comes back, and a new semaphore starts from what is there.
Expiry is wall-clock time: the restarted semaphore may run on another node.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from ray_backup import constants as C
from ray_backup.coordination.redis import client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredLease:
    holder: str
    expires_at: float  # wall-clock (time.time()) seconds


class LeaseStore(Protocol):
    def load(self) -> dict[str, StoredLease]:
        """The leases still held; raises if they cannot be read."""

    def put(self, lease_id: str, lease: StoredLease) -> None: ...

    def delete(self, *lease_ids: str) -> None: ...

    def close(self) -> None: ...


class RedisLeaseStore:
    """The leases in one Redis hash; calls raise ``RedisError`` (the caller decides)."""

    def __init__(self, url: str, prefix: str = C.DEFAULT_REDIS_PREFIX) -> None:
        self.key = C.SEMAPHORE_LEASES_KEY.format(prefix=prefix)
        self._client = client(url)

    def __repr__(self) -> str:
        return f"RedisLeaseStore({self.key!r})"

    def load(self) -> dict[str, StoredLease]:
        now = time.time()
        held, expired = {}, []
        for lease_id, raw in self._client.hgetall(self.key).items():
            try:
                data = json.loads(raw)
                lease = StoredLease(str(data["holder"]), float(data["expires_at"]))
            except (TypeError, ValueError, KeyError):
                log.warning("ssh permit lease %s unreadable in Redis; dropped", lease_id)
                expired.append(lease_id)
                continue
            if lease.expires_at > now:
                held[lease_id] = lease
            else:
                expired.append(lease_id)
        if expired:
            self.delete(*expired)
        return held

    def put(self, lease_id: str, lease: StoredLease) -> None:
        value = json.dumps({"holder": lease.holder, "expires_at": lease.expires_at})
        self._client.hset(self.key, lease_id, value)

    def delete(self, *lease_ids: str) -> None:
        if lease_ids:
            self._client.hdel(self.key, *lease_ids)

    def close(self) -> None:
        self._client.close()
