"""A small API for notebooks: connect, look at the fleet, back up some of it now.

    import ray_backup.notebook as rb
    rb.connect()                      # RAY_ADDRESS, or a local Ray
    rb.status()                       # the running job's devices as a table
    rb.backup(rb.status().where(status="failed"))   # back those up now, with a progress bar
    rb.diff("7d0c6a1e-...")           # what changed between the last two snapshots

Without a running job, ``backup(inventory="devices.yaml")`` does a one-shot backup.
"""

from __future__ import annotations

import difflib
import html
import json
from pathlib import Path
from typing import Iterable

import ray

from ray_backup import constants as C
from ray_backup import job, tables
from ray_backup.settings import Settings

_COLUMNS = ("device_id", "hostname", "host", "status", "last_success", "error_kind", "sha256_hash", "node")


class Table:
    """Rows of dicts that render as an HTML table in a notebook."""

    def __init__(self, rows: list[dict], title: str = "") -> None:
        self.rows = rows
        self.title = title

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def where(self, **equals) -> Table:
        """Rows whose fields equal the given values, e.g. ``where(status="failed")``."""
        return Table([r for r in self.rows if all(r.get(k) == v for k, v in equals.items())], self.title)

    def ids(self) -> list[str]:
        return [r["device_id"] for r in self.rows]

    def counts(self, field: str = "status") -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[str(row.get(field))] = out.get(str(row.get(field)), 0) + 1
        return out

    def to_pandas(self):
        import pandas  # optional: only when asked for

        return pandas.DataFrame(self.rows)

    def _repr_html_(self) -> str:
        columns = [c for c in _COLUMNS if any(c in r for r in self.rows)] or sorted(
            {k for r in self.rows for k in r}
        )
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(_cell(r, c)))}</td>" for c in columns) + "</tr>"
            for r in self.rows
        )
        caption = f"<caption>{html.escape(self.title)} ({len(self.rows)} rows)</caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        lines = [f"{self.title} ({len(self.rows)} rows)"]
        for r in self.rows:
            lines.append("  ".join(str(_cell(r, c)) for c in ("device_id", "status", "error_kind")))
        return "\n".join(lines)


def _cell(row: dict, column: str):
    if column == "last_success":
        return tables.ago(row.get("last_success_at"))
    if column == "node":
        return (row.get("node_id") or "")[:8]
    if column == "error_kind":
        return row.get("error_kind") or row.get("last_error_kind") or ""
    if column == "sha256_hash":
        return (row.get("sha256_hash") or "")[:12]
    return row.get(column) if row.get(column) is not None else ""


def connect(address: str | None = None, **local_options) -> dict:
    """Connect to the cluster (``address`` or RAY_ADDRESS) or start a local Ray."""
    local_options.setdefault("num_cpus", 2)
    local_options.setdefault("object_store_memory", 200 * 1024 * 1024)
    job.connect(address, **local_options)
    return {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "job_running": _supervisor() is not None}


def _supervisor():
    return job.running_supervisor()


def status() -> Table:
    """The running job's devices and their state."""
    supervisor = _supervisor()
    if supervisor is None:
        raise RuntimeError("no ray-backup job is running; start one, or use backup(inventory=...)")
    return Table(ray.get(supervisor.status.remote()), "fleet status")


def backup(devices: Iterable | None = None, inventory: str | None = None, progress: bool = True) -> Table:
    """Back up devices now, with a progress bar; returns the results table.

    With a running job, ``devices`` are ids (or a ``Table``) of its devices, all
    when None; each goes through the job's device actor and SSH semaphore.
    Otherwise ``inventory`` (a YAML file or DATABASE_URL) is backed up once.
    """
    ids = _ids(devices)
    supervisor = _supervisor()
    if supervisor is not None and inventory is None:
        ids = ids if ids is not None else [r["device_id"] for r in ray.get(supervisor.status.remote())]
        refs = {supervisor.trigger.remote(i): i for i in ids}
        return Table(_collect(refs, progress), "backup results")
    from ray_backup import oneshot
    from ray_backup.inventory.base import open_inventory

    settings = Settings.load(inventory_file=inventory)
    source = open_inventory(inventory or settings)
    try:
        loaded = source.load()
    finally:
        source.close()
    chosen = [d for d in loaded.devices if ids is None or d.id in ids]
    bar = _bar(len(chosen), progress)
    env = job.actor_env({"inventory": inventory})
    results = oneshot.backup_fleet(settings, chosen, env, on_result=lambda r: bar.update(1))
    bar.close()
    return Table(results, "backup results")


def trigger(device_id: str, wait: bool = True):
    """Back up one device now through the running job; the result (or its ObjectRef)."""
    supervisor = _supervisor()
    if supervisor is None:
        raise RuntimeError("no ray-backup job is running")
    ref = supervisor.trigger.remote(device_id)
    return ray.get(ref) if wait else ref


def snapshots(device_id: str, output: str | None = None, limit: int = 2) -> list[dict]:
    """The device's latest snapshot events, newest last (directory sink or Kafka topic)."""
    settings = Settings.load()
    if settings.kafka_bootstrap_servers and output is None:
        return _kafka_snapshots(settings, device_id, limit)
    path = Path(output or settings.output_dir) / "snapshots.jsonl"
    found = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            if event["device_id"] == device_id:
                found.append(event)
    return found[-limit:]


def diff(device_id: str, output: str | None = None) -> str:
    """Unified diff between the device's last two distinct snapshots ('' when unchanged)."""
    events = snapshots(device_id, output, limit=10_000)
    distinct = []
    for event in events:
        if not distinct or distinct[-1]["sha256_hash"] != event["sha256_hash"]:
            distinct.append(event)
    if len(distinct) < 2:
        return ""
    old, new = distinct[-2], distinct[-1]
    return "".join(
        difflib.unified_diff(
            old["config_text"].splitlines(keepends=True), new["config_text"].splitlines(keepends=True),
            fromfile=f"{device_id} {old['collected_at']}", tofile=f"{device_id} {new['collected_at']}",
        )
    )


def _kafka_snapshots(settings: Settings, device_id: str, limit: int) -> list[dict]:
    from ray_backup.sinks.kafka import read_topic

    events = [e for e in read_topic(settings) if e["device_id"] == device_id]
    return events[-limit:]


def _ids(devices) -> list[str] | None:
    if devices is None:
        return None
    if isinstance(devices, Table):
        return devices.ids()
    if isinstance(devices, str):
        return [devices]
    return [d if isinstance(d, str) else d["device_id"] for d in devices]


def _collect(refs: dict, progress: bool) -> list[dict]:
    bar = _bar(len(refs), progress)
    results = []
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            try:
                results.append(ray.get(ref))
            except Exception as exc:
                results.append({"device_id": refs[ref], "status": C.STATUS_FAILED,
                                "error": f"{type(exc).__name__}: {exc}"})
            bar.update(1)
    bar.close()
    return results


def _bar(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="backing up", unit="device", disable=not enabled)
