"""SSHSemaphore as a plain class: FIFO waiters, leases, live limits, login pacing."""

import asyncio
import time

import pytest

from ray_backup.actors.semaphore import SSHSemaphore


def run(coro):
    return asyncio.run(coro)


def test_waiters_are_served_in_order_and_never_dropped():
    async def main():
        sem = SSHSemaphore(limit=2)
        held = [await sem.acquire("a", 60), await sem.acquire("b", 60)]
        order = []

        async def waiter(name):
            lease = await sem.acquire(name, 60)
            order.append(name)
            await asyncio.sleep(0)
            await sem.release(lease, name)

        tasks = [asyncio.create_task(waiter(f"w{i}")) for i in range(5)]
        await asyncio.sleep(0.01)
        assert sem.stats()["waiting"] == 5
        for lease, holder in zip(held, "ab", strict=True):
            await sem.release(lease, holder)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert order == [f"w{i}" for i in range(5)]
        assert sem.stats()["peak_held"] == 2 and sem.stats()["held"] == 0

    run(main())


def test_a_dead_holders_lease_expires_and_its_permit_comes_back():
    async def main():
        sem = SSHSemaphore(limit=1)
        await sem.acquire("dead-actor", lease_s=0.5)  # never released
        started = time.monotonic()
        lease = await asyncio.wait_for(sem.acquire("next", 60), timeout=5)
        assert time.monotonic() - started >= 0.4
        assert sem.stats()["expired_total"] == 1
        assert await sem.release(lease, "next") is True

    run(main())


def test_raising_the_limit_serves_waiters_at_once_and_lowering_it_holds_new_ones():
    async def main():
        sem = SSHSemaphore(limit=1)
        first = await sem.acquire("a", 60)
        waiter = asyncio.create_task(sem.acquire("b", 60))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await sem.set_limits(limit=2)
        second = await asyncio.wait_for(waiter, 1)
        await sem.set_limits(limit=1)
        third = asyncio.create_task(sem.acquire("c", 60))
        await sem.release(first, "a")
        await asyncio.sleep(0.01)
        assert not third.done()  # still two held against a limit of one
        await sem.release(second, "b")
        await sem.release(await asyncio.wait_for(third, 1), "c")
        with pytest.raises(ValueError):
            await sem.set_limits(limit=0)

    run(main())


def test_cancelled_waiter_leaves_the_queue():
    async def main():
        sem = SSHSemaphore(limit=1)
        first = await sem.acquire("a", 60)
        waiter = asyncio.create_task(sem.acquire("b", 60))
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert sem.stats()["waiting"] == 0
        await sem.release(first, "a")
        assert sem.stats()["held"] == 0

    run(main())


def test_login_rate_spaces_out_new_sessions():
    async def main():
        sem = SSHSemaphore(limit=10, logins_per_second=20)
        started = time.monotonic()
        leases = [await sem.acquire(f"d{i}", 60) for i in range(5)]
        elapsed = time.monotonic() - started
        assert elapsed >= 4 / 20 * 0.9  # five logins at 20/s take at least 0.2 s
        for i, lease in enumerate(leases):
            await sem.release(lease, f"d{i}")

    run(main())


# -- a cap that holds (issue 9, item 4) -------------------------------------------------


class MemoryLeaseStore:
    """What Redis keeps for the semaphore, in a dict that outlives one semaphore."""

    def __init__(self):
        self.leases = {}

    def load(self):
        return {k: v for k, v in self.leases.items() if v.expires_at > time.time()}

    def put(self, lease_id, lease):
        self.leases[lease_id] = lease

    def delete(self, *lease_ids):
        for lease_id in lease_ids:
            self.leases.pop(lease_id, None)

    def close(self):
        pass


def test_release_by_another_holder_or_of_an_unknown_lease_is_refused(caplog):
    async def main():
        sem = SSHSemaphore(limit=1)
        lease = await sem.acquire("a", 60)
        assert await sem.release(lease, "b") is False  # not b's permit
        assert await sem.release("no-such-lease", "a") is False
        assert sem.stats()["held"] == 1
        assert await sem.release(lease, "a") is True
        assert await sem.release(lease, "a") is False  # twice: the second is refused
        assert sem.stats()["held"] == 0 and sem.stats()["refused_releases_total"] == 3

    run(main())
    assert "release by b refused (held by a)" in caplog.text


def test_lease_ids_never_repeat_across_semaphores():
    async def main():
        first, second = SSHSemaphore(limit=5), SSHSemaphore(limit=5)
        ids = [await s.acquire("a", 60) for s in (first, second) for _ in range(5)]
        assert len(set(ids)) == 10 and not {"1", 1} & set(ids)

    run(main())


def test_a_restarted_semaphore_keeps_the_stored_leases_and_the_cap():
    async def main():
        store = MemoryLeaseStore()
        sem = SSHSemaphore(limit=2, store=store)
        a, b = await sem.acquire("a", 60), await sem.acquire("b", 60)
        assert set(store.leases) == {a, b}
        again = SSHSemaphore(limit=2, store=store, restarted=True, quarantine_s=60)
        assert again.stats()["held"] == 2 and again.stats()["holding_after_restart_s"] == 0
        waiter = asyncio.create_task(again.acquire("c", 60))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # a and b are still logged in: no third permit
        assert await again.release(a, "b") is False
        assert await again.release(a, "a") is True  # a's old lease id still works
        c = await asyncio.wait_for(waiter, 1)
        await asyncio.sleep(0.05)  # the store is written in its thread
        assert set(store.leases) == {b, c}

    run(main())


def test_a_restarted_semaphore_without_a_store_waits_out_the_longest_lease():
    async def main():
        sem = SSHSemaphore(limit=2, restarted=True, quarantine_s=1.0)
        started = time.monotonic()
        assert sem.stats()["holding_after_restart_s"] > 0
        lease = await asyncio.wait_for(sem.acquire("a", 60), 5)
        assert time.monotonic() - started >= 0.9
        assert await sem.release(lease, "a")

    run(main())


def test_a_lease_counts_from_when_its_holder_gets_it_not_from_its_grant():
    async def main():
        sem = SSHSemaphore(limit=3, logins_per_second=2)  # one login every 0.5 s
        await sem.acquire("a", 10)
        await sem.acquire("b", 10)  # paced: handed over 0.5 s after its grant
        left = {lease.holder: lease.expires - time.monotonic() for lease in sem._leases.values()}
        assert left["b"] > 9.9

    run(main())


def test_a_store_that_fails_is_not_waited_on_for_every_grant(caplog):
    class HungStore(MemoryLeaseStore):
        calls = 0

        def put(self, lease_id, lease):
            HungStore.calls += 1
            time.sleep(0.3)  # a socket timeout
            raise ConnectionError("redis hung")

    async def main():
        sem = SSHSemaphore(limit=10, store=HungStore())
        leases = [await sem.acquire(f"d{i}", 60) for i in range(5)]
        assert len(set(leases)) == 5 and sem.stats()["held"] == 5  # granted all the same
        assert HungStore.calls == 1  # then left alone for a while

    run(main())
    assert caplog.text.count("kept in memory only") == 1
