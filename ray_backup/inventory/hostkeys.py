"""Trust-on-first-use host keys for file inventories: a JSON sidecar file.

``<inventory>.hostkeys.json`` maps device id to its stored key::

    {"7d0c6a1e-…": {"fingerprint": "SHA256:…", "first_seen": "…", "last_verified": "…"}}

Writers take an exclusive lock on ``<sidecar>.lock`` and replace the file
atomically (temporary file + rename), so concurrent backups in several
processes never lose each other's keys and a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ray_backup.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no inter-process lock, the in-process lock still holds
    fcntl = None  # type: ignore[assignment]

Entries = dict[str, dict[str, Any]]


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class HostKeyFile:
    """The sidecar of one inventory file."""

    def __init__(self, path: str | os.PathLike, now: Callable[[], datetime] = _utc_now) -> None:
        self.path = Path(path)
        self._now = now
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, ...], dict[str, str]] | None = None

    def __repr__(self) -> str:
        return f"HostKeyFile({str(self.path)!r})"

    def stamp(self) -> tuple[int, ...]:
        """Changes whenever the file does; () when it does not exist."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return ()
        return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)

    def fingerprints(self) -> dict[str, str]:
        """Device id → stored fingerprint; re-read only when the file changed."""
        stamp = self.stamp()
        cached = self._cached
        if cached and cached[0] == stamp:
            return cached[1]
        found = {k: v["fingerprint"] for k, v in self._read().items()}
        self._cached = (stamp, found)
        return found

    def record(self, device_id: str, fingerprint: str) -> bool:
        """Store a first-seen key; True when ``fingerprint`` is now the stored one."""
        with self._locked() as entries:
            entry = entries.get(device_id)
            now = self._now().isoformat()
            if entry is None:
                entries[device_id] = {"fingerprint": fingerprint, "first_seen": now,
                                      "last_verified": now}
                return True
            if entry["fingerprint"] != fingerprint:
                return False
            entry["last_verified"] = now
            return True

    def touch(self, device_id: str) -> None:
        with self._locked() as entries:
            if device_id in entries:
                entries[device_id]["last_verified"] = self._now().isoformat()

    def accept(self, device_id: str, fingerprint: str) -> None:
        """An operator's choice: replaces any stored key, verified by the next backup."""
        with self._locked() as entries:
            entries[device_id] = {"fingerprint": fingerprint,
                                  "first_seen": self._now().isoformat()}

    def reset(self, device_id: str) -> bool:
        with self._locked() as entries:
            return entries.pop(device_id, None) is not None

    @contextmanager
    def _locked(self) -> Iterator[Entries]:
        """Read, let the caller change, and write back, all under the lock."""
        with self._lock, open(f"{self.path}.lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self._read()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                self._write(entries)

    def _read(self) -> Entries:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise ConfigError(f"{self.path}: cannot read host key file ({exc.strerror})") from None
        try:
            data = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            raise ConfigError(f"{self.path}: host key file is not valid JSON ({exc})") from None
        return _entries(data, self.path)

    def _write(self, entries: Entries) -> None:
        fd, tmp = tempfile.mkstemp(
            dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp"
        )
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(entries, out, indent=2, sort_keys=True)
                out.write("\n")
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _entries(data: Any, path: Path) -> Entries:
    """Validate the sidecar; a damaged one must fail loudly, not silently re-trust keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: host key file must be a JSON object of device ids")
    entries: Entries = {}
    for device_id, entry in data.items():
        if isinstance(entry, str):  # a hand-written {"id": "SHA256:…"} is fine too
            entry = {"fingerprint": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("fingerprint"), str):
            raise ConfigError(
                f"{path}: host key file entry {device_id!r} has no fingerprint string"
            )
        entries[device_id] = dict(entry)
    return entries
