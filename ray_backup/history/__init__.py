"""Configuration history: distinct versions per device, diffs, section summaries, change events.

``base`` holds the shapes every part shares (stores, writers, views); see DESIGN.md "History".
``open_history`` picks the store the way the issue decided: ``--output`` when given,
else ``DATABASE_URL``, else ``./backups`` (the settings' output directory).
"""

from __future__ import annotations

import os

from ray_backup.history.base import HistoryStore
from ray_backup.settings import Settings


def open_history(settings: Settings, output_dir: str | os.PathLike | None = None) -> HistoryStore:
    """The history store for these settings: texts sealed as the settings allow, and each
    store of a device retiring that device's versions older than ``CONFIG_RETENTION_DAYS``."""
    from ray_backup.history.sealing import Sealer

    sealer = Sealer.from_settings(settings)
    if output_dir is None and settings.database_url:
        from ray_backup.history.postgres import PostgresHistory

        return PostgresHistory(settings.database_url, sealer, settings.config_retention_days)
    from ray_backup.history.directory import DirectoryHistory

    output = output_dir if output_dir is not None else settings.output_dir
    return DirectoryHistory(output, sealer, retention_days=settings.config_retention_days)
