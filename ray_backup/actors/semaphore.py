"""SSHSemaphore: the cluster-wide cap on concurrent SSH sessions.

Waiters are served first come, first served and are never dropped. A permit is
a lease: if its holder dies without releasing it, it comes back when the lease
runs out. An optional login rate spaces out new sessions so that a fleet-wide
sweep does not flood the devices' RADIUS/TACACS servers.

The cap must hold across a restart of the actor (Ray restarts it; its holders
are still logged in): with a lease store (Redis) every lease is written before
its holder gets it and a new semaphore starts from the stored ones; without one,
a restarted semaphore grants nothing until the longest lease could have run out.
Lease ids are random, so an id from before a restart never names a new lease.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import secrets
import time
import warnings
from dataclasses import dataclass

from ray_backup.coordination.leases import LeaseStore, StoredLease

log = logging.getLogger(__name__)

# After a failed store call, leases are kept in memory only for this long before the store
# is tried again: a hung Redis would otherwise cost every grant a socket timeout, one
# after another (the store has one thread).
STORE_RETRY_S = 30.0


@dataclass
class _Lease:
    holder: str
    lease_s: float
    expires: float  # time.monotonic()


class SSHSemaphore:
    """Plain class; ``actors.options`` turns it into the ``ssh-semaphore`` actor.

    ``persist``: the job's semaphore; reads the settings from the environment, keeps
    its leases in Redis when ``REDIS_URL`` is set, and knows from Ray whether it was
    restarted. ``store``, ``restarted`` and ``quarantine_s`` set the same directly.
    """

    def __init__(
        self,
        limit: int,
        logins_per_second: float = 0.0,
        persist: bool = False,
        *,
        store: LeaseStore | None = None,
        restarted: bool = False,
        quarantine_s: float = 0.0,
    ) -> None:
        self._limit = limit
        self._rate = logins_per_second
        self._leases: dict[str, _Lease] = {}
        self._waiters: collections.deque[tuple[asyncio.Future, str, float]] = collections.deque()
        self._next_login = 0.0
        self._hold_until = 0.0
        self._granted = 0
        self._expired = 0
        self._refused = 0
        self._peak = 0
        self._reaper: asyncio.Task | None = None
        self._store_down_until = 0.0
        if persist:
            store, restarted, quarantine_s = _from_environment()
        self._store = store
        # One thread: a lease's write always lands before its deletion.
        self._io = concurrent.futures.ThreadPoolExecutor(1) if store is not None else None
        self._restore(restarted, quarantine_s)

    def __repr__(self) -> str:
        return f"SSHSemaphore(held={len(self._leases)}/{self._limit}, waiting={len(self._waiters)})"

    async def acquire(self, holder: str, lease_s: float) -> str:
        """Wait for a permit; return its lease id."""
        self._ensure_reaper()
        if not self._waiters and self._room():
            lease_id = self._grant(holder, lease_s)  # granted before any await: the cap holds
            try:
                await self._hand_over(lease_id)
            except asyncio.CancelledError:
                self._drop(lease_id)
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
                self._drop(future.result())  # granted while being cancelled: give it back
            raise

    async def release(self, lease_id: str, holder: str) -> bool:
        """Return a permit; refused (False, logged) for an unknown or expired lease, or
        one that another holder has."""
        if not self._take_back(lease_id, holder):
            return False
        self._drop(lease_id, forget=False)
        # Awaited: once the holder has its answer the lease is gone from the store too, so
        # a job stopped right after its devices does not leave it for the next one.
        await self._forget(lease_id)
        return True

    async def acquire_many(self, holder: str, lease_s: float, n: int) -> list[str]:
        """Wait for one permit like ``acquire``; return it with up to ``n - 1`` more that are
        free now and wanted by nobody queued before (a fleet worker's batch, one call).

        Only without a login rate: paced logins are handed over one at a time."""
        leases = [await self.acquire(holder, lease_s)]
        while len(leases) < n and self._rate <= 0 and not self._waiters and self._room():
            lease_id = self._grant(holder, lease_s)  # granted before any await: the cap holds
            leases.append(lease_id)
        await asyncio.gather(*(self._hand_over(lease_id) for lease_id in leases[1:]))
        return leases

    async def release_many(self, lease_ids: list[str], holder: str) -> int:
        """Return several permits of ``holder`` in one call; how many were accepted."""
        taken = [lease_id for lease_id in lease_ids if self._take_back(lease_id, holder)]
        if taken:
            self._drop(*taken, forget=False)
            await self._forget(*taken)
        return len(taken)

    def _take_back(self, lease_id: str, holder: str) -> bool:
        lease = self._leases.get(lease_id)
        if lease is None or lease.holder != holder:
            self._refused += 1
            whose = "unknown or expired" if lease is None else f"held by {lease.holder}"
            log.warning("ssh permit %s: release by %s refused (%s)", lease_id, holder, whose)
            return False
        return True

    async def set_limits(self, limit: int | None = None,
                         logins_per_second: float | None = None) -> None:
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
            "refused_releases_total": self._refused,
            "peak_held": self._peak,
            "logins_per_second": self._rate,
            "holding_after_restart_s": round(max(0.0, self._hold_until - time.monotonic()), 1),
            "holders": sorted(lease.holder for lease in self._leases.values()),
        }

    def reset_peak(self) -> None:
        self._peak = len(self._leases)

    def ping(self) -> bool:
        return True

    # -- granting ------------------------------------------------------------------

    def _room(self) -> bool:
        return len(self._leases) < self._limit and time.monotonic() >= self._hold_until

    def _grant(self, holder: str, lease_s: float) -> str:
        lease_id = secrets.token_hex(8)
        # No expiry until it is handed over (``_hand_over`` starts its clock).
        self._leases[lease_id] = _Lease(holder, lease_s, float("inf"))
        self._granted += 1
        self._peak = max(self._peak, len(self._leases))
        return lease_id

    async def _hand_over(self, lease_id: str) -> None:
        """Sleep out the login slot, start the lease's clock, store it: then it is the
        holder's. The lease counts from here, so pacing does not eat its time."""
        await self._pace()
        lease = self._leases.get(lease_id)
        if lease is None:
            return
        lease.expires = time.monotonic() + lease.lease_s
        if self._store is not None:
            stored = StoredLease(lease.holder, time.time() + lease.lease_s)
            await self._in_io("store", self._store.put, lease_id, stored)

    def _serve(self) -> None:
        while self._waiters and self._room():
            future, holder, lease_s = self._waiters.popleft()
            if future.done():
                continue
            lease_id = self._grant(holder, lease_s)  # granted now, so the limit holds
            asyncio.get_running_loop().create_task(self._resolve(future, lease_id))

    async def _resolve(self, future: asyncio.Future, lease_id: str) -> None:
        await self._hand_over(lease_id)
        if not future.done() and lease_id in self._leases:
            future.set_result(lease_id)
        else:
            self._drop(lease_id)

    def _drop(self, *lease_ids: str, forget: bool = True) -> None:
        for lease_id in lease_ids:
            self._leases.pop(lease_id, None)
        if forget and lease_ids and self._store is not None:
            asyncio.get_running_loop().create_task(self._forget(*lease_ids))
        self._serve()

    async def _forget(self, *lease_ids: str) -> None:
        if self._store is not None:
            await self._in_io("forget", self._store.delete, *lease_ids)

    async def _pace(self) -> None:
        if self._rate <= 0:
            return
        now = time.monotonic()
        slot = max(now, self._next_login)
        self._next_login = slot + 1.0 / self._rate
        if slot > now:
            await asyncio.sleep(slot - now)

    # -- restarts, expiry and the store ----------------------------------------------

    def _restore(self, restarted: bool, quarantine_s: float) -> None:
        if self._store is not None:
            try:
                stored = self._store.load()
            except Exception as exc:
                log.warning("ssh permit leases not readable from %s: %s", self._store, exc)
            else:
                now_wall, now = time.time(), time.monotonic()
                for lease_id, lease in stored.items():
                    left = lease.expires_at - now_wall
                    self._leases[lease_id] = _Lease(lease.holder, left, now + left)
                if stored:
                    log.info("ssh semaphore: %d permit(s) still held, restored from %s",
                             len(stored), self._store)
                return
        if restarted and quarantine_s > 0:
            # Holders of the lost leases may still be logged in: wait until they cannot be.
            self._hold_until = time.monotonic() + quarantine_s
            log.warning("ssh semaphore restarted without its leases; no new permits for %.0f s "
                        "(the longest lease)", quarantine_s)

    async def _in_io(self, what: str, fn, *args) -> None:
        if time.monotonic() < self._store_down_until:
            return  # stored leases not deleted now run out by their expiry
        try:
            await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
        except Exception as exc:  # the cap holds in memory; only a restart would forget it
            if time.monotonic() >= self._store_down_until:
                log.warning("ssh permit leases: could not %s in %s (%s); kept in memory only "
                            "for the next %.0f s", what, self._store, exc, STORE_RETRY_S)
            self._store_down_until = time.monotonic() + STORE_RETRY_S

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            expired = [lease_id for lease_id, lease in self._leases.items() if lease.expires <= now]
            for lease_id in expired:
                self._expired += 1
                log.warning("ssh permit of %s expired without release; reclaimed",
                            self._leases[lease_id].holder)
            self._drop(*expired)  # also serves waiters once a restart's hold has passed


def _from_environment() -> tuple[LeaseStore | None, bool, float]:
    """The job semaphore's store, whether Ray restarted it, and its longest lease."""
    import ray

    from ray_backup.coordination.leases import RedisLeaseStore
    from ray_backup.runtime import schedule
    from ray_backup.settings import Settings

    settings = Settings.load()
    store = RedisLeaseStore(settings.redis_url, settings.redis_prefix) if settings.redis_url else None
    with warnings.catch_warnings():  # Ray's property reads its own deprecated ``actor_id``
        warnings.simplefilter("ignore", DeprecationWarning)
        restarted = bool(ray.get_runtime_context().was_current_actor_reconstructed)
    return store, restarted, schedule(settings).lease_s
