"""SSHSemaphore: the cluster-wide cap on concurrent SSH sessions.

Waiters are served first come, first served and are never dropped. A permit is
a lease: if its holder dies without releasing it, it comes back when the lease
runs out. An optional login rate spaces out new sessions so that a fleet-wide
sweep does not flood the devices' RADIUS/TACACS servers.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class _Lease:
    holder: str
    expires: float


class SSHSemaphore:
    """Plain class; ``actors.options`` turns it into the ``ssh-semaphore`` actor."""

    def __init__(self, limit: int, logins_per_second: float = 0.0) -> None:
        self._limit = limit
        self._rate = logins_per_second
        self._leases: dict[int, _Lease] = {}
        self._waiters: collections.deque[tuple[asyncio.Future, str, float]] = collections.deque()
        self._ids = itertools.count(1)
        self._next_login = 0.0
        self._granted = 0
        self._expired = 0
        self._peak = 0
        self._reaper: asyncio.Task | None = None

    def __repr__(self) -> str:
        return f"SSHSemaphore(held={len(self._leases)}/{self._limit}, waiting={len(self._waiters)})"

    async def acquire(self, holder: str, lease_s: float) -> int:
        """Wait for a permit; return its lease id."""
        self._ensure_reaper()
        if not self._waiters and len(self._leases) < self._limit:
            lease_id = self._grant(holder, lease_s)  # granted before any await: the cap holds
            try:
                await self._pace()
            except asyncio.CancelledError:
                self.release(lease_id)
                raise
            return lease_id
        future = asyncio.get_running_loop().create_future()
        entry = (future, holder, lease_s)
        self._waiters.append(entry)
        try:
            return await future
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif future.done() and not future.cancelled():
                self.release(future.result())  # granted while being cancelled: give it back
            raise

    async def acquire_many(self, holder: str, lease_s: float, n: int) -> list[int]:
        """Wait for one permit like ``acquire``; return it with up to ``n - 1`` more that are
        free now and wanted by nobody queued before (one call for a worker's batch)."""
        leases = [await self.acquire(holder, lease_s)]
        while (len(leases) < n and self._rate <= 0 and not self._waiters
               and len(self._leases) < self._limit):
            leases.append(self._grant(holder, lease_s))
        return leases

    def release_many(self, lease_ids: list[int], holder: str = "") -> int:
        """Return several permits in one call; how many were still held."""
        found = sum(self._leases.pop(lease_id, None) is not None for lease_id in lease_ids)
        self._serve()
        return found

    def release(self, lease_id: int) -> bool:
        """Return a permit; False if the lease had already expired."""
        found = self._leases.pop(lease_id, None) is not None
        self._serve()
        return found

    def set_limits(self, limit: int | None = None, logins_per_second: float | None = None) -> None:
        """Change the limits at run time; waiters are served at once if room opened."""
        if limit is not None:
            if limit < 1:
                raise ValueError("limit must be at least 1")
            self._limit = limit
        if logins_per_second is not None:
            self._rate = max(0.0, logins_per_second)
        self._serve()

    def stats(self) -> dict:
        return {
            "limit": self._limit,
            "held": len(self._leases),
            "waiting": len(self._waiters),
            "granted_total": self._granted,
            "expired_total": self._expired,
            "peak_held": self._peak,
            "logins_per_second": self._rate,
            "holders": sorted(lease.holder for lease in self._leases.values()),
        }

    def reset_peak(self) -> None:
        self._peak = len(self._leases)

    def ping(self) -> bool:
        return True

    def _grant(self, holder: str, lease_s: float) -> int:
        lease_id = next(self._ids)
        self._leases[lease_id] = _Lease(holder, time.monotonic() + lease_s)
        self._granted += 1
        self._peak = max(self._peak, len(self._leases))
        return lease_id

    def _serve(self) -> None:
        while self._waiters and len(self._leases) < self._limit:
            future, holder, lease_s = self._waiters.popleft()
            if future.done():
                continue
            lease_id = self._grant(holder, lease_s)
            if self._rate > 0:
                # Granted now, so the limit holds; the caller sleeps out its login slot.
                asyncio.get_running_loop().create_task(self._resolve_paced(future, lease_id))
            else:
                future.set_result(lease_id)

    async def _resolve_paced(self, future: asyncio.Future, lease_id: int) -> None:
        await self._pace()
        if not future.done():
            future.set_result(lease_id)
        else:
            self.release(lease_id)

    async def _pace(self) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._next_login)
        self._next_login = slot + 1.0 / self._rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for lease_id, lease in list(self._leases.items()):
                if lease.expires <= now:
                    del self._leases[lease_id]
                    self._expired += 1
                    log.warning("ssh permit of %s expired without release; reclaimed", lease.holder)
            self._serve()
