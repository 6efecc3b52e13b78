"""Snapshots for the history tests: real captures, normalized, with edits applied."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

from ray_backup.drivers.routeros import DRIVER
from ray_backup.simulator.captures import load_capture
from ray_backup.snapshot import Snapshot

DEVICE = "11111111-1111-4111-8111-111111111111"
TENANT = "22222222-2222-4222-8222-222222222222"
# Ten days ago, on the hour: recent for the default retention (CONFIG_RETENTION_DAYS, 90,
# which every store of a device applies), old for a test's retention_days=1.
START = (datetime.now(timezone.utc) - timedelta(days=10)).replace(minute=0, second=0, microsecond=0)


def capture_text(name: str = "L009UiGS_7.15.2") -> str:
    """A real export, normalized as a backup stores it."""
    return DRIVER.normalize(load_capture(name).export)


def at(hours: float) -> str:
    """``START`` plus ``hours``, RFC 3339."""
    return (START + timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def snapshot(text: str, collected_at: str, device: str = DEVICE, tenant: str = TENANT) -> Snapshot:
    return Snapshot(device, tenant, collected_at, hashlib.sha256(text.encode()).hexdigest(), text, 2)


def insert_after(text: str, anchor: str, *lines: str) -> str:
    """``text`` with ``lines`` inserted after the first line equal to ``anchor``."""
    out = text.splitlines()
    i = out.index(anchor) + 1
    return "\n".join(out[:i] + list(lines) + out[i:]) + "\n"


def variants(base: str, count: int) -> list[str]:
    """``count`` distinct configurations, each one address-list entry more than the last."""
    return [insert_after(base, "/ip firewall address-list",
                         *(f"add address=203.0.113.{n} list=blocked" for n in range(k)))
            for k in range(count)]
