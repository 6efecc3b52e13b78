"""A small API for notebooks: connect, look at the fleet, back up some of it now.

    import ray_backup.notebook as rb
    rb.connect()                          # RAY_ADDRESS, or a local Ray
    rb.status()                           # the running job's devices, as a table
    rb.backup(rb.status().where(status="failed"))   # back those up now: progress bar, results
    rb.trigger(device_id)                 # one device now, through its device actor
    rb.wait_for_backups(since=t)          # until every device was tried after t
    rb.diff(device_id)                    # what changed between its last two snapshots

Without a running job, ``backup(inventory="devices.yaml")`` backs an inventory up
once, in parallel on Ray. ``start_job`` and ``stop_job`` run the job itself from
a notebook (against a local Ray, for trying things out).

Snapshots are read back from the directory sink (``output``) or, when
``KAFKA_BOOTSTRAP_SERVERS`` is set, from the Kafka topic.
"""

from __future__ import annotations

import difflib
import html
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

import ray

from ray_backup import constants as C
from ray_backup import job, tables
from ray_backup.settings import Settings

STATUS_COLUMNS = ("hostname", "device_id", "host", "port", "status", "last_success", "error_kind",
                  "sha256_hash", "next_due", "node")
RESULT_COLUMNS = ("hostname", "device_id", "status", "error_kind", "error", "sha256_hash",
                  "duration_s")
_COLOURS = {"success": "#1a7f37", "failed": "#cf222e", "auth_blocked": "#8250df",
            "hostkey_blocked": "#8250df", "backoff": "#9a6700", "locked": "#9a6700"}


class Table:
    """Rows of dicts; an HTML table in a notebook, plain lines elsewhere."""

    def __init__(self, rows: list[dict], title: str = "", columns: Iterable[str] = STATUS_COLUMNS):
        self.rows = list(rows)
        self.title = title
        self.columns = tuple(columns)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, index):
        return self.rows[index]

    def where(self, **equals) -> Table:
        """Rows whose fields equal the given values, e.g. ``where(status="failed")``."""
        rows = [r for r in self.rows if all(r.get(k) == v for k, v in equals.items())]
        return Table(rows, self.title, self.columns)

    def ids(self) -> list[str]:
        return [r["device_id"] for r in self.rows]

    def counts(self, field: str = "status") -> dict[str, int]:
        """How many rows have each value of ``field``."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[str(row.get(field))] = out.get(str(row.get(field)), 0) + 1
        return out

    def to_pandas(self):
        import pandas  # optional: only when asked for

        return pandas.DataFrame(self.rows)

    def _shown_columns(self) -> list[str]:
        return [c for c in self.columns if any(_cell(r, c) != "" for r in self.rows)]

    def _repr_html_(self) -> str:
        columns = self._shown_columns()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(_html_cell(r, c) for c in columns) + "</tr>" for r in self.rows
        )
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        caption = f"<caption>{html.escape(self.title)}: {len(self.rows)} devices ({counts})</caption>"
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def __repr__(self) -> str:
        columns = [c for c in self._shown_columns() if c not in ("device_id", "host", "node")]
        lines = [f"{self.title} ({len(self.rows)} rows)"]
        lines += ["  ".join(str(_cell(r, c)) for c in columns) for r in self.rows]
        return "\n".join(lines)


def _cell(row: dict, column: str):
    if column == "last_success":
        return tables.ago(row.get("last_success_at"))
    if column == "next_due":
        return tables.until(row.get("next_due"))
    if column == "node":
        return (row.get("node_id") or "")[:8]
    if column == "error_kind":
        return row.get("error_kind") or row.get("last_error_kind") or ""
    if column == "error":
        return row.get("error") or row.get("last_error") or ""
    if column == "sha256_hash":
        return (row.get("sha256_hash") or "")[:12]
    if column == "duration_s" and row.get("duration_s") is not None:
        return f"{row['duration_s']:.2f}"
    return row.get(column) if row.get(column) is not None else ""


def _html_cell(row: dict, column: str) -> str:
    text = html.escape(str(_cell(row, column)))
    colour = _COLOURS.get(row.get("status", "")) if column == "status" else None
    return f'<td style="color:{colour}">{text}</td>' if colour else f"<td>{text}</td>"


class Diff(str):
    """A unified diff (a ``str``); coloured in a notebook, '(no change)' when empty."""

    def _repr_html_(self) -> str:
        if not self:
            return "<pre>(no change)</pre>"
        colour = {"+": "#1a7f37", "-": "#cf222e", "@": "#0969da"}
        lines = []
        for line in self.splitlines():
            style = colour.get(line[:1]) if not line.startswith(("+++", "---")) else None
            text = html.escape(line)
            lines.append(f'<span style="color:{style}">{text}</span>' if style else text)
        return "<pre>" + "\n".join(lines) + "</pre>"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self) or "(no change)")


# -- the cluster and the job -------------------------------------------------------------


def connect(address: str | None = None, **local_options) -> dict:
    """Connect to the cluster at ``address`` or RAY_ADDRESS, or else start a small local Ray.

    ``address="auto"`` joins a Ray already started on this machine (``ray start``).
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
    from ray_backup import oneshot

    oneshot.warm_up()  # the fleet workers start now, so the first backup() need not wait
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


def status() -> Table:
    """The running job's devices and their state."""
    return Table(ray.get(_supervisor().status.remote()), "fleet status")


# -- backups now --------------------------------------------------------------------------


def backup(devices: Iterable | None = None, inventory: str | os.PathLike | None = None,
           output: str | os.PathLike | None = None, progress: bool = True) -> Table:
    """Back devices up now, with a progress bar; return the results table.

    ``devices``: ids, status rows or a ``Table``; all devices when None. With a
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
        return _results(_collect(refs, progress), names)
    return _one_shot(ids, _path(inventory), _path(output), progress)


def _one_shot(ids: list[str] | None, inventory: str | None, output: str | None,
              progress: bool) -> Table:
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
    return _results(results, {d.id: d.hostname for d in chosen})


def trigger(device_id: str, wait: bool = True):
    """Back one device up now through the running job: its result dict, or an ObjectRef."""
    ref = _supervisor().trigger.remote(device_id)
    return ray.get(ref) if wait else ref


def wait_for_backups(devices: Iterable | None = None, since: float | None = None,
                     timeout: float = 120.0, progress: bool = True) -> Table:
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
    return Table(rows, "fleet status")


# -- snapshots ----------------------------------------------------------------------------


def snapshots(device_id: str, output: str | os.PathLike | None = None, limit: int = 2) -> list[dict]:
    """The device's latest ``limit`` snapshot events, oldest first.

    From ``output`` (the directory sink) when given, else from the Kafka topic when
    KAFKA_BOOTSTRAP_SERVERS is set, else from RAY_BACKUP_OUTPUT_DIR.
    """
    settings = Settings.load()
    if settings.kafka_bootstrap_servers and output is None:
        return _kafka_snapshots(settings, device_id, limit)
    path = Path(output or settings.output_dir).expanduser() / "snapshots.jsonl"
    found: list[dict] = []
    if not path.exists():
        return found
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if device_id in line:  # cheap pre-filter: most lines are other devices'
                event = json.loads(line)
                if event["device_id"] == device_id:
                    found.append(event)
    return found[-limit:]


def diff(device_id: str, output: str | os.PathLike | None = None) -> Diff:
    """Unified diff between the device's last two distinct snapshots ('' when unchanged)."""
    events = snapshots(device_id, output, limit=10_000)
    distinct: list[dict] = []
    for event in events:
        if not distinct or distinct[-1]["sha256_hash"] != event["sha256_hash"]:
            distinct.append(event)
    if len(distinct) < 2:
        return Diff("")
    old, new = distinct[-2], distinct[-1]
    return Diff("".join(difflib.unified_diff(
        old["config_text"].splitlines(keepends=True), new["config_text"].splitlines(keepends=True),
        fromfile=f"{device_id} {old['collected_at']}", tofile=f"{device_id} {new['collected_at']}",
    )))


def _kafka_snapshots(settings: Settings, device_id: str, limit: int, window: int = 1000) -> list[dict]:
    """The device's last ``limit`` events, reading each partition backwards in windows."""
    from confluent_kafka import Consumer, TopicPartition

    from ray_backup.sinks.kafka_config import security_config

    consumer = Consumer({
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": f"ray-backup-notebook-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        **security_config(settings),
    })
    try:
        topic = settings.kafka_topic
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        found: list[tuple[str, dict]] = []
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            start, end, events = high, high, []
            while start > low and len(events) < limit:
                start = max(low, start - window)
                events = _read_range(consumer, topic, partition, start, end, device_id) + events
                end, window = start, window * 2
            found += events
        found.sort(key=lambda item: item[0])
        return [event for _, event in found[-limit:]]
    finally:
        consumer.close()


def _read_range(consumer, topic: str, partition: int, start: int, end: int,
                device_id: str) -> list[tuple[str, dict]]:
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, partition, start)])
    out, position = [], start
    while position < end:
        message = consumer.poll(10)
        if message is None:
            break  # the broker went quiet: take what we have
        if message.error():
            raise RuntimeError(f"reading {topic}: {message.error()}")
        position = message.offset() + 1
        if message.offset() < end and message.key() == device_id.encode():
            event = json.loads(message.value())
            out.append((event["collected_at"], event))
    return out


# -- helpers ------------------------------------------------------------------------------


def _ensure_connected() -> None:
    if not ray.is_initialized():
        connect()


def _path(value: str | os.PathLike | None) -> str | None:
    return None if value is None else str(value)


def _ids(devices) -> list[str] | None:
    if devices is None:
        return None
    if isinstance(devices, Table):
        return devices.ids()
    if isinstance(devices, str):
        return [devices]
    return [d if isinstance(d, str) else d["device_id"] for d in devices]


def _results(results: list[dict], names: dict[str, str | None]) -> Table:
    rows = [{"hostname": names.get(r["device_id"]), **r} for r in results]
    rows.sort(key=lambda r: (r.get("hostname") or "", r["device_id"]))
    return Table(rows, "backup results", RESULT_COLUMNS)


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
