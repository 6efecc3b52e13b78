"""The rules every store applies to a new snapshot, whatever keeps the versions.

Same hash as the newest version: a duplicate. Collected before the newest
version: stale (late delivery), ignored rather than stored as a reversed diff.
Otherwise a new version, with a masked diff and a section summary against the
newest one — even when the text equals an older version (A→B→A stores A again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from ray_backup.history.base import ChangeEvent, HistoryLookupError, SectionChange, Version
from ray_backup.history.diffing import Diff, unified_diff
from ray_backup.history.mask import mask_secrets
from ray_backup.history.sections import summarize
from ray_backup.snapshot import Snapshot

# Retention never deletes a device's newest version, nor the one before it: the latest
# change keeps its diff and summary however long ago it happened.
KEEP_NEWEST = 2


def parse_time(value: str | datetime) -> datetime:
    """An RFC 3339 time (``Z`` or offset) as an aware UTC datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def rfc3339(value: datetime) -> str:
    return parse_time(value).strftime("%Y-%m-%dT%H:%M:%SZ")


def verdict(snapshot: Snapshot, newest: Version | None) -> str | None:
    """``duplicate``, ``stale``, or None for a new version."""
    if newest is None:
        return None
    if snapshot.sha256_hash == newest.sha256_hash:
        return "duplicate"
    if parse_time(snapshot.collected_at) < parse_time(newest.collected_at):
        return "stale"
    return None


@dataclass(frozen=True)
class Comparison:
    """What is stored about the step from the newest version to a new one."""

    diff: Diff  # its text has secret values masked
    sections: tuple[SectionChange, ...]


def compare(old_id: str, old_text: str, new_id: str, new_text: str) -> Comparison:
    diff = unified_diff(old_text, new_text, old_id, new_id)
    masked = Diff(mask_secrets(diff.text), diff.lines_added, diff.lines_removed)
    return Comparison(masked, summarize(old_text, new_text))


def change_event(old: Version, new: Version) -> ChangeEvent:
    return ChangeEvent(
        device_id=new.device_id,
        tenant_id=new.tenant_id,
        old_snapshot_id=old.snapshot_id,
        new_snapshot_id=new.snapshot_id,
        old_sha256_hash=old.sha256_hash,
        new_sha256_hash=new.sha256_hash,
        collected_at=new.collected_at,
        lines_added=new.lines_added or 0,
        lines_removed=new.lines_removed or 0,
        sections=new.sections,
    )


def redelivered_change(store, snapshot: Snapshot, stored) -> ChangeEvent | None:
    """The change event of the version that this very snapshot created, when it comes again.

    A writer that stored a new version and died before publishing its change event leaves
    the snapshot's offset uncommitted: the group delivers it again, the store finds a
    duplicate, and without this the change event would never go out. The same snapshot
    (hash and collection time of the newest version) gets its change event again: change
    events are at least once, keyed by ``new_snapshot_id``. A later backup of an unchanged
    configuration has a later collection time and announces nothing.
    """
    newest = stored.version
    if stored.outcome != "duplicate" or newest is None \
            or parse_time(snapshot.collected_at) != parse_time(newest.collected_at):
        return None
    found = store.versions(snapshot.device_id, limit=2)
    if len(found) < 2 or found[0].snapshot_id != newest.snapshot_id:
        return None  # the device's first version: no change to announce
    return change_event(found[1], found[0])


def match_ref(device_id: str, ids: list[str], ref: str) -> str:
    """The one id equal to ``ref`` or starting with it (8 characters at least)."""
    ref = ref.strip().lower()
    if ref in ids:
        return ref
    if len(ref) < 8:
        raise HistoryLookupError(
            f"device {device_id}: no snapshot {ref!r} (a prefix needs at least 8 characters)"
        )
    found = [i for i in ids if i.startswith(ref)]
    if len(found) != 1:
        what = "no snapshot" if not found else f"{len(found)} snapshots match"
        raise HistoryLookupError(f"device {device_id}: {what} {ref!r}")
    return found[0]
