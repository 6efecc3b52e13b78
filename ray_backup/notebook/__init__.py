"""A small API for notebooks: the fleet, backups now, and its configuration history.

    import ray_backup.notebook as rb
    rb.connect()                           # RAY_ADDRESS, or a local Ray
    fleet = rb.status()                    # the running job's devices (a pandas DataFrame)
    rb.backup(fleet[fleet.status == "failed"])  # back those up now: progress bar, results
    rb.trigger(device_id)                  # one device now, through its device actor
    rb.history(device_id)                  # its configuration versions, newest first
    rb.diff(device_id)                     # what changed between its last two versions
    rb.search(r"ntp server")               # that line on every device's newest version

Tables are pandas DataFrames (``pip install 'ray-backup[notebook]'``). The job
side (``jobs``) needs Ray; the history side (``history``) reads the store the
job writes (``output``, else DATABASE_URL, else ./backups) and needs no Ray.
"""

from ray_backup.notebook.frames import Diff
from ray_backup.notebook.history import diff, history, search, show
from ray_backup.notebook.jobs import (
    backup,
    connect,
    start_job,
    status,
    stop_job,
    trigger,
    wait_for_backups,
)

__all__ = ["Diff", "backup", "connect", "diff", "history", "search", "show", "start_job", "status",
           "stop_job", "trigger", "wait_for_backups"]
