"""A sink for a single machine without Kafka: files in a directory.

``<device>.rsc`` holds the device's latest normalized configuration, replaced
atomically; ``snapshots.jsonl`` gets one line per snapshot (the full event, as
it would go to Kafka). Several actor processes append to the same history, so
each line is written whole under an exclusive ``flock``. Files are owner-only:
configurations carry the devices' secrets.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ray_backup.errors import PublishFailed
from ray_backup.sinks.files import append_line, atomic_replace, ensure_dir, safe_name
from ray_backup.snapshot import Snapshot

logger = logging.getLogger(__name__)

HISTORY_FILE = "snapshots.jsonl"


class DirectorySink:
    """Latest config per device plus an append-only history, in one directory."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        try:
            ensure_dir(self.path)
        except OSError as exc:
            raise PublishFailed(f"cannot create output directory {self.path}: {_why(exc)}") from exc

    def __repr__(self) -> str:
        return f"DirectorySink({str(self.path)!r})"

    def config_path(self, device_id: str) -> Path:
        """Where the device's latest configuration is kept."""
        return self.path / f"{safe_name(device_id)}.rsc"

    def publish(self, snapshot: Snapshot) -> None:
        """Append the event to the history, then replace the device's latest config.

        History first: a crash in between leaves the latest file one snapshot
        behind the history, never showing a config the history lacks.
        """
        try:
            append_line(self.path / HISTORY_FILE, snapshot.to_json_bytes() + b"\n")
            atomic_replace(self.config_path(snapshot.device_id), snapshot.config_text.encode())
        except OSError as exc:
            raise PublishFailed(
                f"device {snapshot.device_id}: cannot write snapshot to {self.path}: {_why(exc)}"
            ) from exc
        logger.debug("device %s: snapshot %s written to %s",
                     snapshot.device_id, snapshot.sha256_hash[:12], self.path)

    def pending(self) -> int:
        return 0  # nothing is ever deferred: publish writes or raises

    def close(self) -> None:
        pass


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
