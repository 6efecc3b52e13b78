"""SSH permits for a fleet worker's sweep: a limit of its own, or leases from the
cluster's semaphore taken and returned in batches.

Asking the semaphore actor for every backup costs two actor calls per backup (about
a millisecond of CPU on each side, each). A worker running many backups at once
asks instead for as many permits as it has backups waiting, hands a returned permit
straight to its next waiting backup, and gives back what it no longer needs in one
call. Every permit it holds is a lease of the semaphore, so the cluster-wide cap
holds as before; a lease is reused only for ``REUSE_S`` after it was granted, then
it goes back, so the job's own devices queued at the semaphore are not starved.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

import ray

from ray_backup import constants as C

log = logging.getLogger(__name__)

REUSE_S = 2.0


class LocalPermits:
    """An in-process SSH limit: a sweep on one node with no job and no login rate."""

    def __init__(self, limit: int) -> None:
        self._semaphore = asyncio.Semaphore(limit)

    async def acquire(self, holder: str, lease_s: float) -> int:
        await self._semaphore.acquire()
        return 0

    async def release(self, lease: int, holder: str) -> None:
        self._semaphore.release()

    async def close(self) -> None:
        pass


class _Lease:
    __slots__ = ("id", "granted")

    def __init__(self, lease_id: Any, granted: float) -> None:
        self.id = lease_id
        self.granted = granted


class PooledPermits:
    """Leases of the semaphore actor ``name``, taken and returned in batches."""

    def __init__(self, name: str, holder: str, reuse_s: float = REUSE_S,
                 clock=time.monotonic) -> None:
        self._name = name
        self._holder = holder
        self._reuse_s = reuse_s
        self._clock = clock
        self._handle = None
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._asking: asyncio.Task | None = None
        self._returning: list[Any] = []
        self._flush: asyncio.Task | None = None
        self.calls = 0  # actor calls made, for tests and benchmarks

    def _semaphore(self):
        if self._handle is None:
            self._handle = ray.get_actor(self._name, namespace=C.NAMESPACE)
        return self._handle

    async def acquire(self, holder: str, lease_s: float) -> _Lease:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._asking is None or self._asking.done():
            # Long enough for a backup that starts at the end of the reuse window.
            self._asking = asyncio.ensure_future(self._ask(lease_s + self._reuse_s))
        try:
            return await future
        except asyncio.CancelledError:
            if future in self._waiters:
                self._waiters.remove(future)
            elif future.done() and not future.cancelled():
                self._give_back(future.result())
            raise

    async def release(self, lease: _Lease, holder: str) -> None:
        # ``holder`` is the device; the semaphore knows the pool's lease by ``self._holder``.
        if self._clock() - lease.granted < self._reuse_s and self._hand(lease):
            return
        self._give_back(lease)

    async def close(self) -> None:
        for future in self._waiters:
            future.cancel()
        if self._asking is not None:
            self._asking.cancel()
            await asyncio.gather(self._asking, return_exceptions=True)
        if self._flush is not None:
            await asyncio.gather(self._flush, return_exceptions=True)
        await self._return_now()

    # -- asking and returning ------------------------------------------------------------

    async def _ask(self, lease_s: float) -> None:
        while any(not f.done() for f in self._waiters):
            wanted = sum(1 for f in self._waiters if not f.done())
            self.calls += 1
            try:
                ids = await self._semaphore().acquire_many.remote(self._holder, lease_s, wanted)
            except (ray.exceptions.RayActorError, ValueError) as exc:
                self._handle = None  # restarted or recreated: look it up again
                for future in self._waiters:
                    if not future.done():
                        future.set_exception(exc)
                self._waiters.clear()
                return
            now = self._clock()
            for lease_id in ids:
                lease = _Lease(lease_id, now)
                if not self._hand(lease):
                    self._give_back(lease)

    def _hand(self, lease: _Lease) -> bool:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(lease)
                return True
        return False

    def _give_back(self, lease: _Lease) -> None:
        self._returning.append(lease.id)
        if self._flush is None or self._flush.done():
            # Returned together with whatever else is returned in this turn of the loop.
            self._flush = asyncio.ensure_future(self._return_soon())

    async def _return_soon(self) -> None:
        await asyncio.sleep(0)
        await self._return_now()

    async def _return_now(self) -> None:
        ids, self._returning = self._returning, []
        if not ids:
            return
        self.calls += 1
        try:
            await self._semaphore().release_many.remote(ids, self._holder)
        except (ray.exceptions.RayActorError, ValueError) as exc:
            self._handle = None
            log.warning("could not return %d ssh permits (they will expire): %s", len(ids), exc)
