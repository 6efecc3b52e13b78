"""The history tables, as the-other-dude's migration 027 creates them.

``create_missing`` adds a table only where none exists (with its indexes), so
a the-other-dude database is never altered. Our copies reference each other as
its do (a diff goes with its snapshots, a change with its diff) but not
``devices`` or ``tenants``, which we may not own.
"""

from __future__ import annotations

import psycopg

TABLES: dict[str, tuple[str, ...]] = {
    "router_config_snapshots": (
        """CREATE TABLE router_config_snapshots (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            device_id uuid NOT NULL,
            tenant_id uuid NOT NULL,
            config_text text NOT NULL,
            sha256_hash varchar(64) NOT NULL,
            collected_at timestamptz NOT NULL DEFAULT now(),
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX idx_rcs_device_collected ON router_config_snapshots "
        "(device_id, collected_at DESC)",
        "CREATE INDEX idx_rcs_device_hash ON router_config_snapshots (device_id, sha256_hash)",
    ),
    "router_config_diffs": (
        """CREATE TABLE router_config_diffs (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            device_id uuid NOT NULL,
            tenant_id uuid NOT NULL,
            old_snapshot_id uuid NOT NULL REFERENCES router_config_snapshots(id) ON DELETE CASCADE,
            new_snapshot_id uuid NOT NULL REFERENCES router_config_snapshots(id) ON DELETE CASCADE,
            diff_text text NOT NULL,
            lines_added int NOT NULL DEFAULT 0,
            lines_removed int NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE UNIQUE INDEX idx_rcd_snapshot_pair ON router_config_diffs "
        "(old_snapshot_id, new_snapshot_id)",
        # versions() joins each snapshot to the diff that produced it
        "CREATE INDEX idx_rcd_new_snapshot ON router_config_diffs (new_snapshot_id)",
    ),
    "router_config_changes": (
        """CREATE TABLE router_config_changes (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            diff_id uuid NOT NULL REFERENCES router_config_diffs(id) ON DELETE CASCADE,
            device_id uuid NOT NULL,
            tenant_id uuid NOT NULL,
            component text NOT NULL,
            summary text NOT NULL,
            raw_line text,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        "CREATE INDEX idx_rcc_diff_id ON router_config_changes (diff_id)",
    ),
}


def missing_tables(conn: psycopg.Connection) -> list[str]:
    return [name for name in TABLES
            if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0] is None]


def create_missing(conn: psycopg.Connection) -> list[str]:
    """Create the history tables that do not exist, in one transaction; return their names."""
    with conn.transaction():
        # Two `db init` at once: the second waits here, then finds the tables.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('ray_backup.history.schema', 0))")
        created = missing_tables(conn)
        for name in created:
            for statement in TABLES[name]:
                conn.execute(statement)
    return created
