"""The-other-dude's ``devices`` table as the inventory (PostgreSQL, psycopg 3).

The whole fleet is read in one query; each row is checked on its own, so one
bad row costs one error line, not the reconcile. The job writes only the three
``ssh_host_key_*`` columns.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg

from ray_backup.credentials.transit import is_transit_ciphertext
from ray_backup.errors import UnknownDevice
from ray_backup.inventory.base import Inventory
from ray_backup.inventory.fields import (
    parse_db_address,
    parse_fingerprint,
    parse_flag,
    parse_port,
    parse_uuid,
)
from ray_backup.models import CredentialRef, Device, secret_digest

CONNECT_TIMEOUT_S = 5
LOAD_TIMEOUT = "30s"

# ip_address::text works for inet (prints '10.0.0.1/32') and for text columns alike.
LOAD_QUERY = """
SELECT id::text, tenant_id::text, hostname, ip_address::text, ssh_port,
       encrypted_credentials, encrypted_credentials_transit,
       routeros_version, ssh_host_key_fingerprint, {legacy}
FROM devices
ORDER BY id
"""
# Optional: the-other-dude's schema has no such column; where an operator added one,
# it allows the device the legacy SSH algorithms (RouterOS 6).
LEGACY_COLUMN = "ssh_legacy_algorithms"
HAS_LEGACY_QUERY = """
SELECT EXISTS (
  SELECT 1 FROM information_schema.columns
  WHERE table_name = 'devices' AND column_name = %(column)s
    AND table_schema = ANY (current_schemas(false))
)
"""

# First use: store only where no key is stored yet; storing the same key again is
# a verification, never a replacement (clearing a key is an operator action).
RECORD_QUERY = """
UPDATE devices
SET ssh_host_key_fingerprint = %(fp)s,
    ssh_host_key_first_seen = COALESCE(ssh_host_key_first_seen, now()),
    ssh_host_key_last_verified = now()
WHERE id = %(id)s
  AND (ssh_host_key_fingerprint IS NULL OR ssh_host_key_fingerprint = ''
       OR ssh_host_key_fingerprint = %(fp)s)
"""
VERIFIED_QUERY = """
UPDATE devices SET ssh_host_key_last_verified = now()
WHERE id = %(id)s AND ssh_host_key_fingerprint IS NOT NULL
"""
EXISTS_QUERY = "SELECT 1 FROM devices WHERE id = %(id)s"
# Returns the key it cleared (NULL when none), no row when the device does not exist.
RESET_QUERY = """
WITH old AS (
    SELECT id, ssh_host_key_fingerprint AS fp FROM devices WHERE id = %(id)s FOR UPDATE
)
UPDATE devices d
SET ssh_host_key_fingerprint = NULL, ssh_host_key_first_seen = NULL,
    ssh_host_key_last_verified = NULL
FROM old WHERE d.id = old.id
RETURNING NULLIF(old.fp, '')
"""
# An operator's accepted key counts from now; it is verified by the next backup.
ACCEPT_QUERY = """
UPDATE devices
SET ssh_host_key_fingerprint = %(fp)s, ssh_host_key_first_seen = now(),
    ssh_host_key_last_verified = NULL
WHERE id = %(id)s
"""

T = TypeVar("T")


def psycopg_url(url: str) -> str:
    """Accept SQLAlchemy-style schemes (``postgresql+asyncpg://``) as plain libpq URLs."""
    return re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url, flags=re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL (or ``key=value`` DSN) without its password, for reprs and logs."""
    if "://" not in url:
        return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    query = re.sub(r"(password=)[^&]*", r"\1***", parts.query)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


class PostgresInventory:
    """Reads devices from PostgreSQL; keeps one connection, reconnects when it breaks."""

    def __init__(self, url: str, connect_timeout: int = CONNECT_TIMEOUT_S) -> None:
        self._url = psycopg_url(url)
        self._connect_timeout = connect_timeout
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._has_legacy: bool | None = None  # asked once per connection

    def __repr__(self) -> str:
        return f"PostgresInventory({redact_url(self._url)!r})"

    def load(self) -> Inventory:
        """All devices; raises ``psycopg.Error`` when the table cannot be read."""
        rows = self._run(self._fetch_devices)
        inventory = Inventory()
        for row in rows:
            _add_row(inventory, row)
        return inventory

    def record_host_key(self, device_id: str, fingerprint: str) -> bool:
        """First writer wins: False when another key is stored; a missing row is an error."""
        params = {"id": parse_uuid(device_id), "fp": fingerprint}

        def record(conn: psycopg.Connection) -> bool:
            if conn.execute(RECORD_QUERY, params).rowcount == 1:
                return True
            _require_row(conn, params)
            return False

        return self._run(record)

    def mark_verified(self, device_id: str) -> None:
        params = {"id": parse_uuid(device_id)}
        self._run(lambda conn: conn.execute(VERIFIED_QUERY, params))

    def reset_host_key(self, device_id: str) -> bool:
        params = {"id": parse_uuid(device_id)}

        def reset(conn: psycopg.Connection) -> bool:
            row = conn.execute(RESET_QUERY, params).fetchone()
            if row is None:
                raise UnknownDevice(f"device {params['id']} is not in the devices table")
            return row[0] is not None

        return self._run(reset)

    def accept_host_key(self, device_id: str, fingerprint: str) -> None:
        params = {"id": parse_uuid(device_id), "fp": parse_fingerprint(fingerprint)}

        def accept(conn: psycopg.Connection) -> None:
            if conn.execute(ACCEPT_QUERY, params).rowcount != 1:
                raise UnknownDevice(f"device {params['id']} is not in the devices table")

        self._run(accept)

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """Run ``work``; a connection that broke since its last use gets one retry."""
        with self._lock:
            reused = self._conn is not None and not self._conn.closed
            try:
                return work(self._connection())
            except psycopg.OperationalError:
                self._drop()
                if not reused:
                    raise
            return work(self._connection())

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._url,
                connect_timeout=self._connect_timeout,
                autocommit=True,
                application_name="ray-backup",
                # No server-side prepared statements: they break behind PgBouncer.
                prepare_threshold=None,
            )
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
            self._has_legacy = None

    def _fetch_devices(self, conn: psycopg.Connection) -> list[tuple[Any, ...]]:
        if self._has_legacy is None:
            found = conn.execute(HAS_LEGACY_QUERY, {"column": LEGACY_COLUMN}).fetchone()
            self._has_legacy = bool(found and found[0])
        query = LOAD_QUERY.format(legacy=LEGACY_COLUMN if self._has_legacy else "NULL")
        # SET LOCAL inside a transaction: the timeout cannot leak to a pooled session.
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SET LOCAL statement_timeout = '{LOAD_TIMEOUT}'")
            cur.execute(query)
            return cur.fetchall()


def _require_row(conn: psycopg.Connection, params: dict) -> None:
    if conn.execute(EXISTS_QUERY, params).fetchone() is None:
        raise UnknownDevice(f"device {params['id']} is not in the devices table")


def _add_row(inventory: Inventory, row: tuple[Any, ...]) -> None:
    (device_id, tenant_id, hostname, address, port,
     legacy, transit, version, fingerprint, legacy_ssh) = row
    label = f"devices row (id {device_id!r}" + (f", hostname {hostname!r})" if hostname else ")")
    legacy = bytes(legacy) if legacy else None
    transit = transit.strip() if transit and transit.strip() else None
    if not legacy and not transit:
        inventory.skipped.append(f"{label}: no credentials stored; not backed up")
        return
    problems = []
    if transit and not is_transit_ciphertext(transit) and not legacy:
        problems.append("encrypted_credentials_transit is not a 'vault:v…' ciphertext")
    if tenant_id is None:
        problems.append("tenant_id is NULL")
    try:
        host = parse_db_address(address)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        port = parse_port(port, "ssh_port")
    except ValueError as exc:
        problems.append(str(exc))
    try:
        # As the YAML inventory does: base64 padding is dropped; anything that is not a
        # SHA256 fingerprint is this row's error, not a host key mismatch at every backup.
        fingerprint = parse_fingerprint((fingerprint or "").strip() or None)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        legacy_ssh = parse_flag(legacy_ssh, LEGACY_COLUMN)
    except ValueError as exc:
        problems.append(str(exc))
    if problems:
        inventory.errors.append(f"{label}: {'; '.join(problems)}")
        return
    if transit and not is_transit_ciphertext(transit):
        transit = None  # not Transit after all; the legacy blob serves
    inventory.devices.append(Device(
        id=device_id,
        host=host,
        port=port,
        tenant_id=tenant_id,
        hostname=(hostname or "").strip() or None,
        routeros_version=(version or "").strip() or None,
        host_key_fingerprint=fingerprint,
        credentials=CredentialRef(
            transit=transit, legacy=legacy, digest=secret_digest(transit, legacy)
        ),
        ssh_legacy_algorithms=legacy_ssh,
    ))
