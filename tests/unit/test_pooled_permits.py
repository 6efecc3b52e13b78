"""Permits taken from the semaphore in batches: the cap holds, FIFO is kept for others,
permits are reused only within the reuse window, everything goes back."""

import asyncio

from ray_backup.actors.permits import PooledPermits
from ray_backup.actors.semaphore import SSHSemaphore


def run(coro):
    return asyncio.run(coro)


class _Remote:
    """``handle.method.remote(...)`` awaited in-process, as a Ray actor call would be."""

    def __init__(self, fn, counter):
        self._fn, self._counter = fn, counter

    def remote(self, *args):
        self._counter.append(self._fn.__name__)

        async def call():
            result = self._fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.ensure_future(call())


class _Handle:
    def __init__(self, sem):
        self.calls = []
        self.acquire_many = _Remote(sem.acquire_many, self.calls)
        self.release_many = _Remote(sem.release_many, self.calls)


def _pool(sem, reuse_s=2.0, clock=None):
    pool = PooledPermits("ssh-semaphore", "oneshot-x", reuse_s=reuse_s,
                         **({"clock": clock} if clock else {}))
    handle = _Handle(sem)
    pool._handle = handle
    return pool, handle


def test_acquire_many_grants_what_is_free_and_respects_those_queued_first():
    async def main():
        sem = SSHSemaphore(limit=3)
        first = await sem.acquire_many("w", 60, 5)
        assert len(first) == 3 and sem.stats()["held"] == 3
        queued = asyncio.ensure_future(sem.acquire("job-device", 60))
        await asyncio.sleep(0)
        later = asyncio.ensure_future(sem.acquire_many("w", 60, 5))
        await asyncio.sleep(0)
        assert await sem.release_many(first[:2], "w") == 2
        assert await queued  # the job's device, queued first, is served first
        assert len(await later) == 1 and sem.stats()["held"] == 3

    run(main())


def test_many_backups_through_a_pool_never_exceed_the_cap_and_make_few_calls():
    async def main():
        sem = SSHSemaphore(limit=4)
        pool, handle = _pool(sem)
        running, peak = 0, 0

        async def backup():
            nonlocal running, peak
            lease = await pool.acquire("dev", 60)
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            await pool.release(lease, "dev")

        await asyncio.gather(*(backup() for _ in range(40)))
        await pool.close()
        stats = sem.stats()
        assert peak <= 4 and stats["peak_held"] <= 4 and stats["held"] == 0
        # Reused within the window: far fewer semaphore calls than 2 per backup.
        assert len(handle.calls) < 20, handle.calls

    run(main())


def test_a_permit_older_than_the_reuse_window_goes_back_to_the_queue():
    async def main():
        now = [0.0]
        sem = SSHSemaphore(limit=1)
        pool, handle = _pool(sem, reuse_s=2.0, clock=lambda: now[0])
        lease = await pool.acquire("a", 60)
        other = asyncio.ensure_future(sem.acquire("job-device", 60))  # queued at the semaphore
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(pool.acquire("b", 60))  # this worker's next backup
        await asyncio.sleep(0.01)
        now[0] = 3.0  # past the window: back to the semaphore, where the job's device waits
        await pool.release(lease, "dev")
        job_lease = await asyncio.wait_for(other, 1)
        assert not waiting.done()
        await sem.release(job_lease, "job-device")
        second = await asyncio.wait_for(waiting, 1)
        await pool.release(second, "dev")
        await pool.close()
        assert sem.stats()["held"] == 0 and sem.stats()["peak_held"] == 1

    run(main())
