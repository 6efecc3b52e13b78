"""ray-backup: scheduled, deduplicated RouterOS configuration backups as a Ray job."""

__version__ = "0.1.0"
