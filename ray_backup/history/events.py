"""Reading snapshot events off the topic, for the history writers.

A message that can never become a version is *poison*: it is skipped, never
retried. Its description names what is wrong, never what the message holds
(it may be a configuration with the device's secrets).
"""

from __future__ import annotations

import json
import re

from ray_backup.drivers.base import sha256_hex
from ray_backup.errors import InvalidOutput
from ray_backup.snapshot import Snapshot

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TEXT_FIELDS = ("device_id", "tenant_id", "collected_at", "sha256_hash", "config_text")


class PoisonMessage(InvalidOutput):
    """A snapshot event that can never be stored: not JSON, a field missing or wrong, a bad hash."""


def parse_snapshot(value: bytes | None) -> Snapshot:
    """The snapshot in a topic message; ``PoisonMessage`` saying what is wrong with it."""
    if not value:
        raise PoisonMessage("empty message")
    try:
        event = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        raise PoisonMessage("not JSON") from None
    if not isinstance(event, dict):
        raise PoisonMessage("not a JSON object")
    missing = [f for f in (*_TEXT_FIELDS, "normalization_version") if event.get(f) in (None, "")]
    if missing:
        raise PoisonMessage(f"missing {', '.join(missing)}")
    wrong = [f for f in _TEXT_FIELDS if not isinstance(event[f], str)]
    if wrong:
        raise PoisonMessage(f"not text: {', '.join(wrong)}")
    try:
        snapshot = Snapshot.from_event(event)
    except (TypeError, ValueError):
        raise PoisonMessage("normalization_version is not a number") from None
    if not _HEX64.fullmatch(snapshot.sha256_hash):
        raise PoisonMessage("sha256_hash is not 64 lowercase hex digits")
    # Versions are deduplicated by hash: a hash that is not the text's would merge or split them.
    if sha256_hex(snapshot.config_text) != snapshot.sha256_hash:
        raise PoisonMessage("sha256_hash is not the SHA-256 of config_text")
    return snapshot


def failure_line(exc: BaseException) -> str:
    """An exception's kind and first line only: a database error's detail lines may quote
    row values, and rows hold configuration text."""
    text = str(exc).strip()
    first = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}"
