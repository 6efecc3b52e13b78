"""The history in PostgreSQL, in the-other-dude's tables, as its own consumer writes them.

Writes are INSERT and DELETE only (its application role may not UPDATE), no new
columns, ``app.current_tenant`` set in every transaction for its row-level
security. Unlike its consumer, each device's step is serialized with a
transaction-scoped advisory lock, so a duplicate delivery or two writers racing
never make a second version, and a snapshot older than the newest version is
reported as stale instead of stored as a diff going backwards.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import psycopg
from psycopg import errors as pg_errors

from ray_backup.errors import ConfigError
from ray_backup.history.base import (
    HistoryLookupError,
    HistoryRejected,
    HistoryUnavailable,
    SectionChange,
    Stored,
    Version,
)
from ray_backup.history.diffing import unified_diff
from ray_backup.history.pgschema import missing_tables
from ray_backup.history.rules import KEEP_NEWEST, change_event, compare, match_ref, rfc3339, verdict
from ray_backup.history.sealing import Sealer
from ray_backup.inventory.postgres import CONNECT_TIMEOUT_S, psycopg_url
from ray_backup.snapshot import Snapshot

logger = logging.getLogger(__name__)

# What the-other-dude's policies read; 'super_admin' lets its devices policy show every row.
TENANT_SETTING = "app.current_tenant"
SUPER_ADMIN = "super_admin"

_NEWEST = """
SELECT id::text, device_id::text, tenant_id::text, sha256_hash, collected_at
FROM router_config_snapshots WHERE device_id = %s
ORDER BY collected_at DESC, created_at DESC LIMIT 1
"""
# One round trip and one JSON document: each version with its diff's counts and its
# changes in order, the time already in RFC 3339. Decoding one document is what keeps
# 1,000 versions within milliseconds (see benchmarks/history_query.py).
_VERSIONS = """
SELECT coalesce(json_agg(json_build_array(
           id, device_id, tenant_id, sha256_hash, collected, lines_added, lines_removed, changes)
       ORDER BY collected_at DESC, created_at DESC), '[]')
FROM (
    SELECT s.id, s.device_id, s.tenant_id, s.sha256_hash, s.collected_at, s.created_at,
           to_char(s.collected_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') AS collected,
           d.lines_added, d.lines_removed,
           (SELECT json_agg(json_build_array(c.component, c.summary, coalesce(c.raw_line, ''))
                            ORDER BY c.created_at, c.id)
            FROM router_config_changes c WHERE c.diff_id = d.id) AS changes
    FROM router_config_snapshots s
    LEFT JOIN router_config_diffs d ON d.new_snapshot_id = s.id
    WHERE s.device_id = %s
    ORDER BY s.collected_at DESC, s.created_at DESC
    LIMIT %s
) AS v
"""
_LATEST = """
SELECT DISTINCT ON (device_id) device_id::text, id::text FROM router_config_snapshots
ORDER BY device_id, collected_at DESC, created_at DESC
"""
# A device's two newest versions stay whatever their age (the newest is its configuration,
# the one before keeps the latest change's diff); diffs and changes that touch a deleted
# version go with it (its foreign keys cascade too; this does not rely on it).
# {device} narrows it to one device (a store's own step), or is empty (all devices).
_PRUNE = """
WITH newest AS (
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY device_id
                                      ORDER BY collected_at DESC, created_at DESC) AS n
        FROM router_config_snapshots WHERE true {device}
    ) AS ranked
    WHERE n <= %(keep)s
), doomed AS (
    SELECT id FROM router_config_snapshots
    WHERE collected_at < now() - make_interval(secs => %(seconds)s) {device}
      AND id NOT IN (SELECT id FROM newest)
), doomed_diffs AS (
    SELECT id FROM router_config_diffs
    WHERE old_snapshot_id IN (SELECT id FROM doomed) OR new_snapshot_id IN (SELECT id FROM doomed)
), changes AS (
    DELETE FROM router_config_changes WHERE diff_id IN (SELECT id FROM doomed_diffs)
), diffs AS (
    DELETE FROM router_config_diffs WHERE id IN (SELECT id FROM doomed_diffs)
)
DELETE FROM router_config_snapshots WHERE id IN (SELECT id FROM doomed)
"""
_PRUNE_ALL = _PRUNE.format(device="")
_PRUNE_DEVICE = _PRUNE.format(device="AND device_id = %(device)s")


class PostgresHistory:
    """``HistoryStore`` over the three ``router_config_*`` tables; one connection, one lock."""

    def __init__(self, url: str, sealer: Sealer | None = None,
                 retention_days: float | None = None) -> None:
        self._url = psycopg_url(url)
        self.sealer = sealer or Sealer()
        self.retention_days = retention_days
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()
        self._layout: _Layout | None = None

    def __repr__(self) -> str:
        return f"PostgresHistory({self.sealer!r})"

    # ------------------------------------------------------------------ writing

    def store(self, snapshot: Snapshot) -> Stored:
        device, tenant = _uuid(snapshot.device_id, "device"), _uuid(snapshot.tenant_id, "tenant")
        with self._transaction(device) as cur:
            self._check_tenant(cur, device, tenant)
            _set_tenant(cur, tenant)
            # Serializes this device's steps across writers, processes and hosts.
            cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                        (f"ray_backup.history:{device}",))
            newest = self._newest(cur, device)
            outcome = verdict(snapshot, newest)
            stored = Stored(outcome, newest) if outcome else self._insert(cur, snapshot, newest)
            if self.retention_days:
                # Each backup of a device retires its expired versions: an index range
                # scan under the lock already held, no fleet-wide job to schedule.
                cur.execute(_PRUNE_DEVICE, {"seconds": self.retention_days * 86400.0,
                                            "device": device, "keep": KEEP_NEWEST})
            return stored

    def _insert(self, cur: psycopg.Cursor, snapshot: Snapshot, newest: Version | None) -> Stored:
        try:
            return self._insert_rows(cur, snapshot, newest)
        except pg_errors.ForeignKeyViolation as exc:
            raise HistoryRejected(
                f"device {snapshot.device_id}: not in the devices table for tenant "
                f"{snapshot.tenant_id}, or the tenant is unknown (the history tables require "
                f"both: {exc.diag.constraint_name or 'a foreign key'})"
            ) from None

    def _insert_rows(self, cur: psycopg.Cursor, snapshot: Snapshot,
                     newest: Version | None) -> Stored:
        device, tenant = snapshot.device_id, snapshot.tenant_id
        cur.execute(
            "INSERT INTO router_config_snapshots (device_id, tenant_id, config_text, sha256_hash, "
            "collected_at) VALUES (%s, %s, %s, %s, %s) RETURNING id::text",
            (device, tenant, self.sealer.seal(device, tenant, snapshot.config_text),
             snapshot.sha256_hash, snapshot.collected_at),
        )
        version = Version(cur.fetchone()[0], device, tenant, snapshot.sha256_hash,
                          rfc3339(snapshot.collected_at))
        if newest is None:
            return Stored("new", version)
        old_text = self._text(cur, newest.device_id, newest.snapshot_id)
        found = compare(newest.snapshot_id, old_text, version.snapshot_id, snapshot.config_text)
        cur.execute(
            "INSERT INTO router_config_diffs (device_id, tenant_id, old_snapshot_id, "
            "new_snapshot_id, diff_text, lines_added, lines_removed) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (device, tenant, newest.snapshot_id, version.snapshot_id, found.diff.text,
             found.diff.lines_added, found.diff.lines_removed),
        )
        diff_id = cur.fetchone()[0]
        # created_at one microsecond apart keeps the summary's order (no column for it).
        cur.executemany(
            "INSERT INTO router_config_changes (diff_id, device_id, tenant_id, component, "
            "summary, raw_line, created_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))",
            [(diff_id, device, tenant, s.component, s.summary, s.raw_line, i / 1e6)
             for i, s in enumerate(found.sections)],
        )
        version = replace(version, lines_added=found.diff.lines_added,
                          lines_removed=found.diff.lines_removed, sections=found.sections)
        return Stored("new", version, change_event(newest, version))

    def prune(self, retention_days: float) -> int:
        deleted = 0
        for tenant in self._tenant_scopes():
            with self._transaction() as cur:
                if tenant:
                    _set_tenant(cur, tenant)
                cur.execute(_PRUNE_ALL, {"seconds": retention_days * 86400.0, "keep": KEEP_NEWEST})
                deleted += cur.rowcount
        return deleted

    # ------------------------------------------------------------------ reading

    def versions(self, device_id: str, limit: int | None = None) -> list[Version]:
        try:
            device = _uuid(device_id, "device", HistoryLookupError)
        except HistoryLookupError:
            return []  # a host name, say: no versions under that id (views try names next)
        with self._transaction(device) as cur:
            self._scope_to_device(cur, device)
            rows = cur.execute(_VERSIONS, (device, limit)).fetchone()[0]
        return [Version(sid, dev, tenant, sha, at, added, removed,
                        tuple(SectionChange(*change) for change in changes or ()))
                for sid, dev, tenant, sha, at, added, removed, changes in rows]

    def text(self, device_id: str, snapshot_id: str | None = None) -> str:
        device = _uuid(device_id, "device", HistoryLookupError)
        with self._transaction(device) as cur:
            self._scope_to_device(cur, device)
            if snapshot_id is None:
                newest = self._newest(cur, device)
                if newest is None:
                    raise HistoryLookupError(f"device {device_id}: no history in the database")
                snapshot_id = newest.snapshot_id
            return self._text(cur, device, self._resolve(cur, device, snapshot_id))

    def resolve(self, device_id: str, ref: str) -> str:
        device = _uuid(device_id, "device", HistoryLookupError)
        with self._transaction(device) as cur:
            self._scope_to_device(cur, device)
            return self._resolve(cur, device, ref)

    def diff(self, device_id: str, old_id: str, new_id: str) -> str:
        device = _uuid(device_id, "device", HistoryLookupError)
        with self._transaction(device) as cur:
            self._scope_to_device(cur, device)
            old, new = self._resolve(cur, device, old_id), self._resolve(cur, device, new_id)
            return unified_diff(self._text(cur, device, old), self._text(cur, device, new),
                                old, new).text

    def stored_diff(self, device_id: str, snapshot_id: str) -> str | None:
        """The masked diff kept for a version (None for a first version or a pruned one)."""
        device = _uuid(device_id, "device", HistoryLookupError)
        with self._transaction(device) as cur:
            self._scope_to_device(cur, device)
            row = cur.execute("SELECT diff_text FROM router_config_diffs "
                              "WHERE device_id = %s AND new_snapshot_id = %s",
                              (device, self._resolve(cur, device, snapshot_id))).fetchone()
        return row[0] if row else None

    def latest(self) -> list[tuple[str, str]]:
        found = []
        for tenant in self._tenant_scopes():
            with self._transaction() as cur:
                if tenant:
                    _set_tenant(cur, tenant)
                found += cur.execute(_LATEST).fetchall()
        return sorted(set(found))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # ------------------------------------------------------------------ helpers

    def _newest(self, cur: psycopg.Cursor, device: str) -> Version | None:
        row = cur.execute(_NEWEST, (device,)).fetchone()
        if row is None:
            return None
        sid, dev, tenant, sha, at = row
        return Version(sid, dev, tenant, sha, rfc3339(at))

    def _resolve(self, cur: psycopg.Cursor, device: str, ref: str) -> str:
        ids = [r[0] for r in cur.execute(
            "SELECT id::text FROM router_config_snapshots WHERE device_id = %s", (device,))]
        if not ids:
            raise HistoryLookupError(f"device {device}: no history in the database")
        return match_ref(device, ids, ref)

    def _text(self, cur: psycopg.Cursor, device: str, snapshot_id: str) -> str:
        row = cur.execute("SELECT tenant_id::text, config_text FROM router_config_snapshots "
                          "WHERE device_id = %s AND id = %s", (device, snapshot_id)).fetchone()
        if row is None:
            raise HistoryLookupError(f"device {device}: no snapshot {snapshot_id}")
        return self.sealer.open(device, row[0], row[1])

    def _check_tenant(self, cur: psycopg.Cursor, device: str, tenant: str) -> None:
        """Where ``devices`` knows the device, the snapshot's tenant must be its tenant."""
        if not self._layout.has_devices:
            return
        known = self._device_tenant(cur, device)
        if known is not None and known != tenant:
            raise HistoryRejected(
                f"device {device}: snapshot says tenant {tenant}, the devices table says {known}"
            )

    def _device_tenant(self, cur: psycopg.Cursor, device: str) -> str | None:
        _set_tenant(cur, SUPER_ADMIN)
        row = cur.execute("SELECT tenant_id::text FROM devices WHERE id = %s", (device,)).fetchone()
        return row[0] if row else None

    def _scope_to_device(self, cur: psycopg.Cursor, device: str) -> None:
        """Reads under row-level security see the device's rows: act as its tenant."""
        if self._layout.row_security and self._layout.has_devices:
            tenant = self._device_tenant(cur, device)
            if tenant:
                _set_tenant(cur, tenant)

    def _tenant_scopes(self) -> list[str | None]:
        """Each tenant in turn where row-level security hides the others, else one pass."""
        with self._transaction() as cur:
            if not self._layout.row_security or not self._layout.has_devices:
                return [None]
            _set_tenant(cur, SUPER_ADMIN)
            return [r[0] for r in cur.execute("SELECT DISTINCT tenant_id::text FROM devices")]

    @contextmanager
    def _transaction(self, device: str | None = None) -> Iterator[psycopg.Cursor]:
        with self._lock:
            conn = self._connection()
            try:
                with conn.transaction(), conn.cursor() as cur:
                    yield cur
            except psycopg.OperationalError as exc:
                self._drop()
                what = f"device {device}: " if device else ""
                raise HistoryUnavailable(
                    f"{what}history database unavailable: {_first_line(exc)}") from None

    def _connection(self) -> psycopg.Connection:
        if self._conn is not None and not self._conn.closed and not self._conn.broken:
            return self._conn
        self._drop()
        try:
            self._conn = psycopg.connect(self._url, connect_timeout=CONNECT_TIMEOUT_S,
                                         autocommit=True)
        except psycopg.OperationalError as exc:
            raise HistoryUnavailable(
                f"history database unavailable: {_first_line(exc)}") from None
        if self._layout is None:
            self._layout = _Layout.read(self._conn)
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class _Layout:
    """What the database offers: checked once per store."""

    def __init__(self, has_devices: bool, row_security: bool) -> None:
        self.has_devices = has_devices
        self.row_security = row_security

    @classmethod
    def read(cls, conn: psycopg.Connection) -> _Layout:
        missing = missing_tables(conn)
        if missing:
            raise ConfigError(f"history table(s) missing: {', '.join(missing)} "
                              "(run `ray-backup db init`)")
        has_devices = conn.execute("SELECT to_regclass('devices')").fetchone()[0] is not None
        # Row security binds us unless we are a superuser or a BYPASSRLS role.
        row = conn.execute(
            "SELECT c.relrowsecurity AND NOT (r.rolsuper OR r.rolbypassrls) "
            "FROM pg_class c, pg_roles r "
            "WHERE c.oid = 'router_config_snapshots'::regclass AND r.rolname = current_user"
        ).fetchone()
        return cls(has_devices, bool(row and row[0]))


def _set_tenant(cur: psycopg.Cursor, tenant: str) -> None:
    cur.execute("SELECT set_config(%s, %s, true)", (TENANT_SETTING, tenant))


def _uuid(value: str, what: str, error: type[Exception] = HistoryRejected) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise error(f"{what} id {value!r} is not a UUID (the history tables key on UUIDs)") from None


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
