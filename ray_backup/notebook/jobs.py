"""The notebook's cluster and job questions: connect, the fleet's status, back up now.

    rb.connect()                          # RAY_ADDRESS, or a local Ray
    rb.status()                           # the running job's devices (DataFrame)
    rb.backup(df[df.status == "failed"])  # back those up now: progress bar, results
    rb.trigger(device_id)                 # one device now, through its device actor
    rb.wait_for_backups(since=t)          # until every device was tried after t

Without a running job, ``backup(inventory="devices.yaml")`` backs an inventory up
once, in parallel on Ray. ``start_job`` and ``stop_job`` run the job itself from
a notebook (against a local Ray, for trying things out).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable

import pandas as pd
import ray

from ray_backup import constants as C
from ray_backup import job
from ray_backup.notebook.frames import device_ids, results_frame, status_frame
from ray_backup.settings import Settings

# -- the cluster and the job -------------------------------------------------------------


def connect(address: str | None = None, **local_options) -> dict:
    """Connect to the cluster at ``address`` or RAY_ADDRESS, or else start a small local Ray.

    ``address="auto"`` joins a Ray already started on this machine (``ray start``).
    A cluster with Ray's token authentication is joined as ``ray-backup`` joins it
    (``job.connect``: token mode when a token is found, one clear error when refused).
    ``local_options`` go to ``ray.init`` for a local Ray (default: 2 CPUs, 200 MB
    object store). Returns the number of nodes and whether a job is running.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and not ray.is_initialized():
        job.connect(address)
    elif not ray.is_initialized():
        local_options.setdefault("num_cpus", 2)
        local_options.setdefault("object_store_memory", 200 * 1024 * 1024)
        # address="local": without it ray.init joins any Ray running on this machine.
        ray.init(address="local", namespace=C.NAMESPACE, **local_options)
    return {
        "nodes": len([n for n in ray.nodes() if n.get("Alive")]),
        "job_running": job.running_supervisor() is not None,
    }


def start_job(inventory: str | os.PathLike | None = None, output: str | os.PathLike | None = None,
              **settings: object) -> dict:
    """Start the backup job (or re-adopt a running one) with these settings.

    ``settings`` are environment variable names, e.g. ``CONFIG_BACKUP_INTERVAL=60``.
    On a cluster the job keeps running when the notebook's kernel stops (a local Ray
    stops with the kernel); ``stop_job()`` ends it.
    """
    _ensure_connected()
    env = job.actor_env({"inventory": _path(inventory), "output": _path(output)})
    env.update({name: str(value) for name, value in settings.items()})
    supervisor = job.start(Settings.load(environ={**os.environ, **env}), env)
    return ray.get(supervisor.start.remote())


def stop_job(grace_s: float = 10.0) -> int:
    """Stop the running job; return how many device actors were removed."""
    return job.stop_all(grace_s=grace_s)


def _supervisor(required: bool = True):
    supervisor = job.running_supervisor() if ray.is_initialized() else None
    if supervisor is None and required:
        raise RuntimeError("no ray-backup job is running; start one (start_job, `ray-backup run`) "
                           "or use backup(inventory=...)")
    return supervisor


def status() -> pd.DataFrame:
    """The running job's devices and their state, one row per device."""
    return status_frame(ray.get(_supervisor().status.remote()))


# -- backups now --------------------------------------------------------------------------


def backup(devices: Iterable | None = None, inventory: str | os.PathLike | None = None,
           output: str | os.PathLike | None = None, progress: bool = True) -> pd.DataFrame:
    """Back devices up now, with a progress bar; return the results table.

    ``devices``: ids, or a DataFrame with a ``device_id`` column (``status()``
    rows, results); all devices when None. With a
    running job (and no ``inventory``), each backup goes through the job's device
    actor and SSH semaphore. Otherwise ``inventory`` (a YAML file, or the
    DATABASE_URL table when None) is backed up once; snapshots go to ``output``
    (or Kafka when KAFKA_BOOTSTRAP_SERVERS is set).
    """
    _ensure_connected()
    ids = _ids(devices)
    supervisor = _supervisor(required=False)
    if supervisor is not None and inventory is None:
        rows = {r["device_id"]: r for r in ray.get(supervisor.status.remote())}
        ids = list(rows) if ids is None else ids
        refs = {supervisor.trigger.remote(i): i for i in ids}
        names = {i: r.get("hostname") for i, r in rows.items()}
        return results_frame(_collect(refs, progress), names)
    return _one_shot(ids, _path(inventory), _path(output), progress)


def _one_shot(ids: list[str] | None, inventory: str | None, output: str | None,
              progress: bool) -> pd.DataFrame:
    from ray_backup import oneshot
    from ray_backup.inventory.base import open_inventory

    settings = Settings.load(inventory_file=inventory, output_dir=output)
    source = open_inventory(inventory or settings)
    try:
        loaded = source.load()
    finally:
        source.close()
    for line in loaded.errors:
        warnings.warn(f"inventory: {line}", stacklevel=3)
    chosen = [d for d in loaded.devices if ids is None or d.id in ids]
    missing = sorted(set(ids or ()) - {d.id for d in chosen})
    if missing:
        warnings.warn(f"not in the inventory: {', '.join(missing)}", stacklevel=3)
    env = job.actor_env({"inventory": inventory, "output": output})
    bar = _bar(len(chosen), progress)
    try:
        results = oneshot.backup_fleet(settings, chosen, env, on_result=lambda r: bar.update(1))
    finally:
        bar.close()
    return results_frame(results, {d.id: d.hostname for d in chosen})


def trigger(device_id: str, wait: bool = True):
    """Back one device up now through the running job: its result dict, or an ObjectRef."""
    ref = _supervisor().trigger.remote(device_id)
    return ray.get(ref) if wait else ref


def wait_for_backups(devices: Iterable | None = None, since: float | None = None,
                     timeout: float = 120.0, progress: bool = True) -> pd.DataFrame:
    """Wait until each device's backup was tried after ``since`` (a ``time.time()``).

    For a job just started, or after ``trigger(..., wait=False)``. Returns the
    status table of those devices; warns about the ones not tried in ``timeout``.
    """
    supervisor = _supervisor()
    since = time.time() if since is None else since
    wanted = _ids(devices)
    deadline = time.monotonic() + timeout
    bar = None
    try:
        while True:
            rows = [r for r in ray.get(supervisor.status.remote())
                    if wanted is None or r["device_id"] in wanted]
            done = [r for r in rows if (r.get("last_attempt_at") or 0) >= since]
            if bar is None:
                bar = _bar(len(rows), progress, desc="waiting")
            bar.update(len(done) - bar.n)
            if (rows and len(done) == len(rows)) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        if bar is not None:
            bar.close()
    late = [r.get("hostname") or r["device_id"] for r in rows if r not in done]
    if late or not rows:
        warnings.warn(f"not tried within {timeout:g} s: {', '.join(late) or 'no devices'}",
                      stacklevel=2)
    return status_frame(rows)


# -- helpers ------------------------------------------------------------------------------


def _ensure_connected() -> None:
    if not ray.is_initialized():
        connect()


def _path(value: str | os.PathLike | None) -> str | None:
    return None if value is None else str(value)


def _ids(devices) -> list[str] | None:
    if devices is None:
        return None
    if isinstance(devices, pd.DataFrame):
        return device_ids(devices)
    if isinstance(devices, str):
        return [devices]
    return [d if isinstance(d, str) else d["device_id"] for d in devices]


def _collect(refs: dict, progress: bool) -> list[dict]:
    bar = _bar(len(refs), progress)
    results = []
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results.append(ray.get(ref))
                except ray.exceptions.RayError as exc:  # that device failed; the others go on
                    results.append({"device_id": refs[ref], "status": C.STATUS_FAILED,
                                    "error_kind": "unknown", "error": f"{type(exc).__name__}: {exc}"})
                bar.update(1)
    finally:
        bar.close()
    return results


def _bar(total: int, enabled: bool, desc: str = "backing up"):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="device", disable=not enabled)
