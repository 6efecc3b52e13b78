"""What a sweep tells a fleet worker, and which code a process runs.

Kept apart from ``actors.worker`` so that the driver imports neither the backup path
(paramiko and the clients: a second of start-up for a command line) nor the worker.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SweepPlan:
    """How one sweep runs on a worker; holds no secret."""

    semaphore: str | None  # the cluster's semaphore actor, or None: a limit of this worker's own
    limit: int
    holder: str  # who holds the permits, as the semaphore sees it
    locked_patience_s: float = 0.0  # a retry after a lost worker outwaits its device locks
    log_level: str = "WARNING"
    code: str = ""  # the driver's ``code_id()``: a worker with other code is replaced


def code_id() -> str:
    """Which ray_backup this process runs: its files' names, sizes and times, hashed once."""
    global _CODE_ID
    if _CODE_ID is None:
        root = Path(__file__).resolve().parents[1]
        digest = hashlib.blake2b(digest_size=6)
        for path in sorted(root.rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        _CODE_ID = digest.hexdigest()
    return _CODE_ID


_CODE_ID: str | None = None
