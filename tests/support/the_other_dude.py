"""A the-other-dude database in miniature: the tables, row-level security and grants its
migrations (001, 022, 027) create, reduced to the columns ray-backup touches."""

from __future__ import annotations

import uuid

import psycopg
from psycopg import sql

TENANT_POLICY = "tenant_id::text = current_setting('app.current_tenant', true)"
SUPER_ADMIN = "current_setting('app.current_tenant', true) = 'super_admin'"

_TABLES = """
CREATE TABLE tenants (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), name varchar(255) NOT NULL);
CREATE TABLE devices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    hostname varchar(255) NOT NULL,
    ip_address varchar(45) NOT NULL,
    ssh_port integer,
    encrypted_credentials bytea,
    encrypted_credentials_transit text,
    routeros_version varchar(100),
    ssh_host_key_fingerprint text,
    ssh_host_key_first_seen timestamptz,
    ssh_host_key_last_verified timestamptz
);
CREATE TABLE router_config_snapshots (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id UUID NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    config_text TEXT NOT NULL,
    sha256_hash VARCHAR(64) NOT NULL,
    collected_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_rcs_device_collected ON router_config_snapshots (device_id, collected_at DESC);
CREATE INDEX idx_rcs_device_hash ON router_config_snapshots (device_id, sha256_hash);
CREATE TABLE router_config_diffs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id UUID NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    old_snapshot_id UUID NOT NULL REFERENCES router_config_snapshots(id) ON DELETE CASCADE,
    new_snapshot_id UUID NOT NULL REFERENCES router_config_snapshots(id) ON DELETE CASCADE,
    diff_text TEXT NOT NULL,
    lines_added INT NOT NULL DEFAULT 0,
    lines_removed INT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE UNIQUE INDEX idx_rcd_snapshot_pair ON router_config_diffs (old_snapshot_id, new_snapshot_id);
CREATE TABLE router_config_changes (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    diff_id UUID NOT NULL REFERENCES router_config_diffs(id) ON DELETE CASCADE,
    device_id UUID NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tenant_id UUID NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
    component TEXT NOT NULL,
    summary TEXT NOT NULL,
    raw_line TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_rcc_diff_id ON router_config_changes (diff_id);
"""


def create_tod_schema(url: str, role: str) -> tuple[str, str]:
    """Create the schema and a login role limited as its ``app_user``; return two tenant ids."""
    tenants = (str(uuid.uuid4()), str(uuid.uuid4()))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_TABLES)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(sql.Identifier(role)))
        for table, policy in (("tenants", f"id::text = current_setting('app.current_tenant', true) "
                                          f"OR {SUPER_ADMIN}"),
                              ("devices", f"{TENANT_POLICY} OR {SUPER_ADMIN}"),  # 022
                              ("router_config_snapshots", TENANT_POLICY),
                              ("router_config_diffs", TENANT_POLICY),
                              ("router_config_changes", TENANT_POLICY)):
            conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
            conn.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
            conn.execute(f"CREATE POLICY tenant_isolation ON {table} USING ({policy}) "
                         f"WITH CHECK ({policy})")
            # 027 grants exactly these on the history tables: no UPDATE.
            grant = "SELECT, INSERT, UPDATE, DELETE" if table in ("tenants", "devices") \
                else "SELECT, INSERT, DELETE"
            conn.execute(sql.SQL(f"GRANT {grant} ON {table} TO {{}}").format(sql.Identifier(role)))
        for i, tenant in enumerate(tenants):
            conn.execute("SELECT set_config('app.current_tenant', 'super_admin', false)")
            conn.execute("INSERT INTO tenants (id, name) VALUES (%s, %s)", (tenant, f"tenant {i}"))
    return tenants


def drop_role(url: str, role: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
