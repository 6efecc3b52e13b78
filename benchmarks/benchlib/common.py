"""Where things are and what a benchmark process must not reach: paths, environment."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # benchmarks/
REPO = HERE.parent
if str(REPO) not in sys.path:  # tests.support.services starts Kafka and PostgreSQL servers
    # Last, so that a PYTHONPATH copy of ray_backup (to measure a proposed change) wins.
    sys.path.append(str(REPO))
RESULTS = HERE / "results"
# Loopback only, as the tests: every Ray a benchmark starts (and every child process: the
# CLI, `ray start`) puts its nodes on 127.0.0.1 instead of the outward interface's address
# (Ray's single-machine mode, its default on macOS and Windows).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# Ray's sockets and session files live here, apart from /tmp/ray, so a benchmark never
# joins (or is joined by) another Ray instance running on the same machine.
RAY_TEMP_DIR = os.path.join(tempfile.gettempdir(), "rb-bench-ray")
# Settings that would point the code under test at shared services by accident.
SERVICE_ENV = ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "RAY_ADDRESS",
               "RAY_BACKUP_CONFIG", "RAY_BACKUP_INVENTORY", "OPENBAO_ADDR", "OPENBAO_TOKEN")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without settings that would reach shared services."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    env.update(extra)
    return env


def scratch(prefix: str) -> str:
    """A temporary directory removed when this process exits (snapshots, inventories)."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def unwind_on_sigterm() -> None:
    """Let SIGTERM unwind like Ctrl-C, so that a stopped run still stops the fleet, the
    servers and the Ray it started (their context managers run)."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)
