"""What every inventory source offers, and the factory that picks one.

A source returns the whole fleet on each ``load``: the devices it can back up,
one line per row it had to reject (``errors``) and one line per row it leaves
out on purpose (``skipped``, e.g. no credentials). A failed read raises, so the
supervisor keeps its current actors instead of stopping the fleet.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ray_backup.errors import ConfigError
from ray_backup.models import Device
from ray_backup.settings import Settings


@dataclass
class Inventory:
    """One read of an inventory source."""

    devices: list[Device] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@runtime_checkable
class InventorySource(Protocol):
    """A device list with trust-on-first-use host key storage."""

    def load(self) -> Inventory:
        """Read the whole inventory; raise if it cannot be read at all."""

    def record_host_key(self, device_id: str, fingerprint: str) -> bool:
        """Store a first-seen host key; False when another key is already stored."""

    def mark_verified(self, device_id: str) -> None:
        """Note that the stored host key was verified just now (callers may throttle)."""

    def reset_host_key(self, device_id: str) -> bool:
        """Forget a device's stored host key (operator action): back to trust on first use.

        False if none was stored; ``UnknownDevice`` if the inventory has no such device."""

    def accept_host_key(self, device_id: str, fingerprint: str) -> None:
        """Store ``fingerprint`` in place of any stored key (operator action after a
        mismatch); ``UnknownDevice`` if the inventory has no such device."""

    def close(self) -> None:
        """Release connections and files."""


def row_error(row: int | None, device_id: object, problem: str) -> str:
    """The one line that names a rejected row: ``inventory row 3 (id 'abc'): …``."""
    where = f"inventory row {row}" if row is not None else "inventory row"
    if isinstance(device_id, str) and device_id:
        return f"{where} (id {device_id[:60]!r}): {problem}"
    return f"{where} (no id): {problem}"


def open_inventory(source: Settings | str | os.PathLike) -> InventorySource:
    """The inventory for ``source``: a PostgreSQL URL, a YAML path, or settings.

    With settings, an inventory file (``RAY_BACKUP_INVENTORY``) wins over
    ``DATABASE_URL``: naming a file is the more specific request.
    """
    if isinstance(source, Settings):
        target = source.inventory_file or source.database_url
        if not target:
            raise ConfigError(
                "no inventory: set DATABASE_URL (PostgreSQL devices table) "
                "or RAY_BACKUP_INVENTORY (YAML file)"
            )
    else:
        target = os.fspath(source)
    if _is_postgres_url(target):
        from ray_backup.inventory.postgres import PostgresInventory

        return PostgresInventory(target)
    from ray_backup.inventory.yamlfile import YamlInventory

    return YamlInventory(target)


# SQLAlchemy-style schemes (postgresql+asyncpg://) are accepted: the-other-dude's
# backend spells its DATABASE_URL that way.
_POSTGRES_URL = re.compile(r"^postgres(?:ql)?(?:\+\w+)?://", re.IGNORECASE)


def _is_postgres_url(target: str) -> bool:
    return bool(_POSTGRES_URL.match(target))
