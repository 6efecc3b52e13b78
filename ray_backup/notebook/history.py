"""The notebook's history questions: what changed on a device, when, and where a line is.

    rb.history(device)          # its versions, newest first (DataFrame)
    rb.history()                # every device's versions: plot the fleet's changes over time
    rb.diff(device)             # what changed between its last two versions (coloured)
    rb.show(device)             # a version's configuration
    rb.search(r"ntp server")    # that line on every device's newest version (DataFrame)

The store is the one the job writes: ``output`` when given, else DATABASE_URL,
else RAY_BACKUP_OUTPUT_DIR (``./backups``). No Ray needed. Secret values are
masked unless ``show_secrets=True``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pandas as pd

from ray_backup.errors import ConfigError
from ray_backup.history.views import HistoryViews, inventory_names
from ray_backup.notebook.frames import Diff, history_frame, search_frame


def history(device: str | None = None, output: str | os.PathLike | None = None,
            inventory: str | os.PathLike | None = None, limit: int | None = None) -> pd.DataFrame:
    """A device's versions, newest first (id or unique hostname); every device's when None.

    Columns: device_id, hostname, snapshot_id, collected_at (UTC), lines_added,
    lines_removed (<NA> for a first version), sections (what changed), sha256_hash.
    """
    with _views(output, inventory) as views:
        if device is not None:
            versions = views.versions(device, limit=limit)
        else:
            versions = [v for device_id, _ in views.store.latest()
                        for v in views.store.versions(device_id, limit=limit)]
        frame = history_frame(versions, _known_names(views))
    # stable: two versions in the same second keep the store's newest-first order
    return frame.sort_values("collected_at", ascending=False, kind="stable", ignore_index=True)


def diff(device: str, old: str | None = None, new: str | None = None,
         output: str | os.PathLike | None = None, inventory: str | os.PathLike | None = None,
         show_secrets: bool = False) -> Diff:
    """Unified diff from ``old`` to ``new`` (snapshot ids or 8+ character prefixes).

    Default: the device's last two versions; with only ``old``, ``new`` is the newest.
    """
    with _views(output, inventory, show_secrets) as views:
        return Diff(views.diff(device, old, new).text)


def show(device: str, snapshot: str | None = None, output: str | os.PathLike | None = None,
         inventory: str | os.PathLike | None = None, show_secrets: bool = False) -> str:
    """A version's configuration text (default the newest)."""
    with _views(output, inventory, show_secrets) as views:
        return views.text(device, snapshot)[1]


def search(pattern: str, output: str | os.PathLike | None = None,
           inventory: str | os.PathLike | None = None, ignore_case: bool = False,
           show_secrets: bool = False) -> pd.DataFrame:
    """Lines matching the regular expression in every device's newest version.

    Columns: hostname, device_id, section (the RouterOS ``/path`` above the line), line.
    """
    with _views(output, inventory, show_secrets) as views:
        return search_frame(views.search(pattern, ignore_case=ignore_case))


@contextmanager
def _views(output, inventory, show_secrets: bool = False) -> Iterator[HistoryViews]:
    from ray_backup.history import open_history
    from ray_backup.settings import Settings

    settings = Settings.load(inventory_file=_path(inventory))
    store = open_history(settings, output_dir=_path(output))
    try:
        yield HistoryViews(store, lambda: inventory_names(settings), show_secrets=show_secrets)
    finally:
        store.close()


def _known_names(views: HistoryViews) -> dict:
    try:
        return dict(views.names)
    except ConfigError as exc:  # the table still answers, by device id
        warnings.warn(str(exc), stacklevel=3)
        return {}


def _path(value) -> str | None:
    return None if value is None else str(value)
