"""Create a compatible ``devices`` table (`ray-backup db init`); add devices to it (tests, benchmarks)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import psycopg

from ray_backup.credentials.legacy import LegacyCipher
from ray_backup.errors import ConfigError
from ray_backup.inventory.fields import DEFAULT_TENANT
from ray_backup.inventory.postgres import CONNECT_TIMEOUT_S, psycopg_url

REQUIRED_COLUMNS = (
    "id", "tenant_id", "hostname", "ip_address", "ssh_port", "encrypted_credentials",
    "encrypted_credentials_transit", "routeros_version", "ssh_host_key_fingerprint",
    "ssh_host_key_first_seen", "ssh_host_key_last_verified",
)

INSERT_QUERY = """
INSERT INTO devices (id, tenant_id, hostname, ip_address, ssh_port, encrypted_credentials,
                     encrypted_credentials_transit, routeros_version, ssh_host_key_fingerprint)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


@dataclass(frozen=True, repr=False)
class NewDevice:
    """A device to insert; the password is encrypted before it reaches the database."""

    host: str
    username: str | None = None
    password: str | None = None
    port: int | None = None
    tenant_id: str = DEFAULT_TENANT
    hostname: str | None = None
    routeros_version: str | None = None
    transit_ciphertext: str | None = None
    host_key_fingerprint: str | None = None
    id: str | None = None

    def __repr__(self) -> str:
        return f"NewDevice(host={self.host!r}, hostname={self.hostname!r})"


def schema_sql() -> str:
    return resources.files("ray_backup.inventory").joinpath("schema.sql").read_text()


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(psycopg_url(url), connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)


def init_db(url: str) -> bool:
    """Create ``devices`` and the history tables where none exist; True if devices was created.

    An existing table is checked, not altered: ``ConfigError`` lists the columns
    ray-backup needs that it lacks. History tables that exist (a the-other-dude
    database) are used as they are.
    """
    from ray_backup.history.pgschema import create_missing

    with _connect(url) as conn:
        existed = _columns(conn) is not None
        if not existed:
            conn.execute(schema_sql())
        create_missing(conn)
        missing = [c for c in REQUIRED_COLUMNS if c not in (_columns(conn) or ())]
    if missing:
        raise ConfigError(f"devices table lacks column(s): {', '.join(missing)}")
    return not existed


def _columns(conn: psycopg.Connection) -> set[str] | None:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_name = 'devices' AND table_schema = ANY(current_schemas(false))"
    ).fetchall()
    return {r[0] for r in rows} or None


def add_devices(url: str, devices: Iterable[NewDevice], encryption_key: str | None) -> list[str]:
    """Insert devices in one transaction; returns their ids.

    Devices with a password get a legacy blob encrypted with ``encryption_key``.
    """
    cipher = LegacyCipher(encryption_key) if encryption_key else None
    rows, ids = [], []
    for d in devices:
        blob = None
        if d.password is not None:
            if cipher is None:
                raise ConfigError("CREDENTIAL_ENCRYPTION_KEY is needed to store a password")
            blob = cipher.encrypt(d.username or "", d.password)
        device_id = d.id or str(uuid.uuid4())
        ids.append(device_id)
        rows.append((device_id, d.tenant_id, d.hostname, d.host, d.port, blob,
                     d.transit_ciphertext, d.routeros_version, d.host_key_fingerprint))
    with _connect(url) as conn, conn.transaction(), conn.cursor() as cur:
        cur.executemany(INSERT_QUERY, rows)
    return ids


def add_device(url: str, host: str, username: str | None = None, password: str | None = None,
               encryption_key: str | None = None, **fields) -> str:
    """Insert one device (see ``NewDevice`` for the optional fields); returns its id."""
    new = NewDevice(host=host, username=username, password=password, **fields)
    return add_devices(url, [new], encryption_key)[0]
