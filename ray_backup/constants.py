"""Every Redis key, topic, actor name and metric name, defined once."""

from __future__ import annotations

# Ray
NAMESPACE = "ray_backup"
SUPERVISOR_NAME = "supervisor"
SEMAPHORE_NAME = "ssh-semaphore"
DEVICE_ACTOR_PREFIX = "device:"
DEVICE_GROUP_PREFIX = "devices:"
# One-shot fleet workers, one per node, kept between sweeps: fleet-worker:<node id>.
FLEET_WORKER_PREFIX = "fleet-worker:"
HISTORY_WRITER_PREFIX = "history-writer-"  # + 0, 1, ...: the history writer actors

# Kafka
DEFAULT_TOPIC = "config.snapshots"
DEFAULT_CHANGES_TOPIC = "config.changes"  # one event per new version with a diff
DEFAULT_HISTORY_GROUP = "ray-backup-history"  # the history writers' consumer group

# Redis. The first two are the reference scheduler's keys and are shared with
# other systems (the poller writes the status key), so they carry no prefix.
DEVICE_STATUS_KEY = "device:{device_id}:status"
DEVICE_LOCK_KEY = "backup:device:{device_id}"
# Our own keys live under a configurable prefix.
DEVICE_STATE_KEY = "{prefix}state:{device_id}"
# The SSH semaphore's granted leases (a hash: lease id -> holder and expiry), so that a
# semaphore restarted by Ray neither forgets nor re-issues permits still held.
SEMAPHORE_LEASES_KEY = "{prefix}semaphore:leases"
DEFAULT_REDIS_PREFIX = "ray_backup:"

# Status values written to the status table and the backup_total metric.
STATUS_SUCCESS = "success"
STATUS_FAILED = "failed"
STATUS_LOCKED = "locked"
STATUS_SKIPPED_OFFLINE = "skipped_offline"
STATUS_AUTH_BLOCKED = "auth_blocked"
STATUS_HOSTKEY_BLOCKED = "hostkey_blocked"
STATUS_BACKOFF = "backoff"
STATUS_PENDING = "pending"

# Metrics: the reference scheduler's names are kept, new ones are ray_backup_*.
METRIC_BACKUP_TOTAL = "mikrotik_config_backup_total"
METRIC_BACKUP_DURATION = "mikrotik_config_backup_duration_seconds"
METRIC_BACKUP_ACTIVE = "mikrotik_config_backup_active"
METRIC_DEVICES = "ray_backup_devices"
METRIC_DEVICES_BLOCKED = "ray_backup_devices_blocked"
METRIC_DEVICES_STALE = "ray_backup_devices_stale"
METRIC_SEMAPHORE_WAITERS = "ray_backup_semaphore_waiters"
METRIC_SEMAPHORE_HELD = "ray_backup_semaphore_permits_held"
METRIC_LAST_SUCCESS_AGE = "ray_backup_last_success_age_seconds"
METRIC_RECONCILE_DURATION = "ray_backup_reconcile_duration_seconds"
METRIC_RECONCILE_ERRORS = "ray_backup_reconcile_errors_total"
METRIC_SPOOL_PENDING = "ray_backup_spool_pending"
METRIC_CONFIG_CHANGES = "ray_backup_config_changes_total"
METRIC_HISTORY_WRITER_LAG = "ray_backup_history_writer_lag"
METRIC_HISTORY_STALE = "ray_backup_history_stale_total"
METRIC_HISTORY_DUPLICATES = "ray_backup_history_duplicates_total"
METRIC_HISTORY_POISON = "ray_backup_history_poison_total"
METRIC_HISTORY_REJECTED = "ray_backup_history_rejected_total"
