"""Keeps a per-device lock alive while the backup it protects runs.

The lock's TTL (the reference's: command timeout + 30 s) only matters when its holder
dies; a live backup can take longer (a slow login, three commands, a slow broker). A
renewal every third of the TTL keeps it, and each renewal is token-checked, so a lock
that expired and was taken by someone else is never extended or deleted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ray_backup.coordination.base import Lock

log = logging.getLogger(__name__)

RunBlocking = Callable[..., Awaitable[Any]]


class LockRenewer:
    """``async with LockRenewer(lock, ttl_s, in_thread):`` renews ``lock`` until the block ends."""

    def __init__(self, lock: Lock, ttl_s: float, run_blocking: RunBlocking) -> None:
        self._lock = lock
        self._period = ttl_s / 3
        self._run_blocking = run_blocking
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> LockRenewer:
        self._task = asyncio.get_running_loop().create_task(self._renew_until_cancelled())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _renew_until_cancelled(self) -> None:
        while True:
            await asyncio.sleep(self._period)
            if not await self._run_blocking(self._lock.renew):
                log.warning("device %s: backup lock expired and could not be renewed; another "
                            "process may back the device up at the same time",
                            self._lock.device_id)
                return
