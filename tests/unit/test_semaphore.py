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
            sem.release(lease)

        tasks = [asyncio.create_task(waiter(f"w{i}")) for i in range(5)]
        await asyncio.sleep(0.01)
        assert sem.stats()["waiting"] == 5
        for lease in held:
            sem.release(lease)
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
        assert sem.release(lease) is True

    run(main())


def test_raising_the_limit_serves_waiters_at_once_and_lowering_it_holds_new_ones():
    async def main():
        sem = SSHSemaphore(limit=1)
        first = await sem.acquire("a", 60)
        waiter = asyncio.create_task(sem.acquire("b", 60))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        sem.set_limits(limit=2)
        second = await asyncio.wait_for(waiter, 1)
        sem.set_limits(limit=1)
        third = asyncio.create_task(sem.acquire("c", 60))
        sem.release(first)
        await asyncio.sleep(0.01)
        assert not third.done()  # still two held against a limit of one
        sem.release(second)
        sem.release(await asyncio.wait_for(third, 1))
        with pytest.raises(ValueError):
            sem.set_limits(limit=0)

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
        sem.release(first)
        assert sem.stats()["held"] == 0

    run(main())


def test_login_rate_spaces_out_new_sessions():
    async def main():
        sem = SSHSemaphore(limit=10, logins_per_second=20)
        started = time.monotonic()
        leases = [await sem.acquire(f"d{i}", 60) for i in range(5)]
        elapsed = time.monotonic() - started
        assert elapsed >= 4 / 20 * 0.9  # five logins at 20/s take at least 0.2 s
        for lease in leases:
            sem.release(lease)

    run(main())
