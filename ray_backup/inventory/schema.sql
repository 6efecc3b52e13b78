-- A devices table compatible with the-other-dude's layout, for installations
-- without one. Only the columns ray-backup reads exist here; an existing table
-- (with many more columns) is never touched. gen_random_uuid() needs PostgreSQL 13+.
CREATE TABLE IF NOT EXISTS devices (
    id                             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id                      uuid NOT NULL,
    hostname                       text,
    ip_address                     inet NOT NULL,
    ssh_port                       integer,
    encrypted_credentials          bytea,
    encrypted_credentials_transit  text,
    routeros_version               text,
    ssh_host_key_fingerprint       text,
    ssh_host_key_first_seen        timestamptz,
    ssh_host_key_last_verified     timestamptz
);
