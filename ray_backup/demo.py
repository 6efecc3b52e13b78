"""`ray-backup demo`: the real job backing up a simulated RouterOS fleet on this machine.

Nothing but this package is needed: the simulator serves the fleet over SSH on
127.0.0.1 (RouterOS 6 and 7, one device with a wrong password and one that
stalls mid-export, configurations that change while it runs), a local Ray runs
the job with a short schedule, and snapshots go to a directory. A live table
shows each device; the demo ends after ``duration`` seconds or on Ctrl-C and
stops everything it started.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ray_backup import constants as C
from ray_backup import tables
from ray_backup.sinks.directory import HISTORY_FILE
from ray_backup.sinks.files import ensure_dir

log = logging.getLogger(__name__)

# Above this many devices, several share one actor process (~110 MB each) so
# that the demo fits a laptop; the fleet then runs in at most MAX_ACTORS processes.
PACK_ABOVE = 16
MAX_ACTORS = 8
MUTATE_EVERY_S = 3.0
POLL_S = 1.0
SEED = 4  # the same fleet every run: the output directory keeps one file per device

# A short schedule so that a minute shows several rounds.
SCHEDULE_ENV = {
    "CONFIG_BACKUP_INTERVAL": "10",
    "CONFIG_BACKUP_JITTER_MIN": "0",
    "CONFIG_BACKUP_JITTER_MAX": "3",
    "DEVICE_REFRESH_SECONDS": "5",
    "CONFIG_BACKUP_COMMAND_TIMEOUT": "5",
    "CONFIG_BACKUP_CONNECT_TIMEOUT": "3",
    "RAY_BACKUP_METRICS_PORT": "0",
    "RAY_BACKUP_LOG_LEVEL": "INFO",
}
# Services the demo never uses, even when this shell points at them (an empty
# value counts as unset, and overrides what the actors would inherit).
UNSET_ENV = ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "RAY_BACKUP_CONFIG",
             "RAY_BACKUP_SPOOL_DIR", "OPENBAO_ADDR", "OPENBAO_TOKEN")
_STYLE = {"success": "green", "failed": "red", "pending": "dim", "auth_blocked": "magenta",
          "hostkey_blocked": "magenta", "backoff": "yellow", "locked": "yellow"}


@dataclass(frozen=True)
class Plan:
    devices: int
    per_actor: int
    faults: dict[str, int]

    @property
    def actors(self) -> int:
        return math.ceil(self.devices / self.per_actor)


def plan(devices: int) -> Plan:
    """How the demo fleet is laid out: faults, and devices per actor process."""
    if devices < 1:
        raise ValueError("--devices must be at least 1")
    per_actor = 1 if devices <= PACK_ABOVE else math.ceil(devices / MAX_ACTORS)
    faults = {"wrong_password": 1, "stall": 1} if devices >= 4 else {}
    return Plan(devices, per_actor, faults)


def demo_env(base: dict[str, str], inventory: Path, output: Path, per_actor: int) -> dict[str, str]:
    """The actors' settings: ``base`` (from ``job.actor_env``) with the demo's schedule."""
    env = dict(base)
    env.update(SCHEDULE_ENV)
    env.update({name: "" for name in UNSET_ENV})
    env["RAY_BACKUP_INVENTORY"] = str(inventory)
    env["RAY_BACKUP_OUTPUT_DIR"] = str(output)
    env["RAY_BACKUP_DEVICES_PER_ACTOR"] = str(per_actor)
    return env


@dataclass
class SnapshotLog:
    """Follows the directory sink's history file: snapshots and changes per device."""

    path: Path
    offset: int = 0
    snapshots: Counter = field(default_factory=Counter)
    changes: Counter = field(default_factory=Counter)
    _last_hash: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_end(cls, path: Path) -> SnapshotLog:
        """Count only what is written from now on (earlier demos share the file)."""
        return cls(path, path.stat().st_size if path.exists() else 0)

    def poll(self) -> None:
        if not self.path.exists():
            return
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line being written is read next time
        self.offset += end
        for line in data[:end].splitlines():
            event = json.loads(line)
            device, digest = event["device_id"], event["sha256_hash"]
            self.snapshots[device] += 1
            if self._last_hash.get(device, digest) != digest:
                self.changes[device] += 1
            self._last_hash[device] = digest


class Mutator(threading.Thread):
    """Changes a random healthy device's configuration every few seconds."""

    def __init__(self, devices, every_s: float = MUTATE_EVERY_S, seed: int = SEED) -> None:
        super().__init__(name="demo-mutator", daemon=True)
        self._devices = [d for d in devices if d.fault is None]
        self._every_s = every_s
        self._rng = random.Random(seed)
        self._stopping = threading.Event()  # not _stop: Thread has a method of that name
        self.count = 0

    def run(self) -> None:
        while self._devices and not self._stopping.wait(self._every_s):
            self._rng.choice(self._devices).mutate()
            self.count += 1

    def stop(self) -> None:
        self._stopping.set()


@dataclass
class Poll:
    rows: list[dict]
    outcomes: dict[str, float]
    elapsed: float


def backup_outcomes(metrics_text: str) -> dict[str, float]:
    """``mikrotik_config_backup_total`` by status label, from the scrape page."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == C.METRIC_BACKUP_TOTAL:
                out[sample.labels["status"]] = sample.value
    return out


def render(poll: Poll, log_: SnapshotLog, duration: float, header: str, max_rows: int) -> Group:
    """The live fleet view: a header, one line per device, a progress line."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in ("device", "port", "ROS", "status", "last ok", "snaps", "changes", "error"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    rows = sorted(poll.rows, key=lambda r: r.get("hostname") or r["device_id"])
    if len(rows) > max_rows:  # problems first, the rest as a count
        rows = sorted(rows, key=lambda r: r["status"] == C.STATUS_SUCCESS)[:max_rows]
    for r in rows:
        style = _STYLE.get(r["status"], "yellow")
        table.add_row(
            r.get("hostname") or r["device_id"][:8], str(r["port"]),
            r.get("routeros_version") or "?", Text(r["status"], style=style),
            tables.ago(r.get("last_success_at")), str(log_.snapshots[r["device_id"]]),
            str(log_.changes[r["device_id"]]), r.get("last_error_kind") or "",
        )
    shown = {r["device_id"] for r in rows}
    hidden = Counter(r["status"] for r in poll.rows if r["device_id"] not in shown)
    parts: list = [Text.from_markup(header), table]
    if hidden:
        counts = ", ".join(f"{n} {status}" for status, n in sorted(hidden.items()))
        parts.append(Text(f"… and {sum(hidden.values())} more devices: {counts}", style="dim"))
    parts.append(_progress_line(poll, log_, duration))
    return Group(*parts)


def _progress_line(poll: Poll, log_: SnapshotLog, duration: float) -> Table:
    ok = poll.outcomes.get("success", 0)
    failed = poll.outcomes.get("error", 0)
    skipped = sum(v for k, v in poll.outcomes.items() if k not in ("success", "error"))
    line = Table.grid(padding=(0, 1))
    line.add_row(
        ProgressBar(total=duration, completed=min(poll.elapsed, duration), width=24),
        Text(f"{poll.elapsed:3.0f}/{duration:.0f} s", style="bold"),
        Text(f"backups: {ok:.0f} ok, {failed:.0f} failed, {skipped:.0f} skipped · "
             f"snapshots on disk: {sum(log_.snapshots.values())} · "
             f"changes detected: {sum(log_.changes.values())}"),
    )
    return line


def run_demo(devices: int = 12, duration: float = 60.0, output: str = "./demo-backups",
             console: Console | None = None) -> int:
    """Run the demo; 0 when snapshots were written, 1 when none were."""
    import ray

    from ray_backup import job
    from ray_backup.errors import ConfigError
    from ray_backup.settings import Settings
    from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml

    console = console or Console()
    try:
        layout = plan(devices)
        if duration <= 0:
            raise ValueError("--duration must be greater than 0")
        out = ensure_dir(Path(output).expanduser().resolve())  # owner-only, as the sink makes it
    except (ValueError, OSError) as exc:
        raise ConfigError(f"demo: {exc}") from None
    if ray.is_initialized():
        raise ConfigError("demo: Ray is already initialized in this process; run it on its own")
    if os.environ.pop("RAY_ADDRESS", None):
        console.print("[yellow]RAY_ADDRESS ignored: the demo runs its own local Ray")
    fleet = make_fleet(devices, seed=SEED, faults=layout.faults)
    workdir = tempfile.TemporaryDirectory(prefix="ray-backup-demo-")
    sim = Simulator(fleet).start()
    mutator = Mutator(fleet)
    state = {"poll": None, "interrupted": False, "dashboard": None, "log": None, "settings": None}
    try:
        inventory = write_inventory_yaml(Path(workdir.name) / "devices.yaml", fleet)
        env = demo_env(job.actor_env(), inventory, out, layout.per_actor)
        settings = state["settings"] = Settings.load(environ={**os.environ, **env})
        _intro(console, layout, sim, out)
        state["log"] = SnapshotLog.from_end(out / HISTORY_FILE)  # before the first backup
        with console.status("starting a local Ray (2 CPUs) and the job's actors…"):
            # address="local": a Ray of its own, even where `ray start` runs one already.
            ray.init(address="local", namespace=C.NAMESPACE, num_cpus=2,
                     object_store_memory=100 * 1024**2, include_dashboard=True,
                     log_to_driver=False, logging_level=logging.WARNING)
            state["dashboard"] = _dashboard_url()
            supervisor = job.start(settings, env)
        mutator.start()
        state["poll"] = _watch(console, supervisor, state["log"], duration, layout, state["dashboard"])
    except KeyboardInterrupt:
        state["interrupted"] = True
    finally:
        _stop(console, mutator, sim, workdir)
    code = _summary(console, state, layout, out, mutator)
    if state["settings"] is not None:
        show_history(console, state["settings"], out, {d.id: d.name for d in fleet})
    return code


def _intro(console: Console, layout: Plan, sim, out: Path) -> None:
    versions = Counter(f"RouterOS {d.major}" for d in sim.devices)
    faults = ", ".join(f"{n} {kind}" for kind, n in layout.faults.items()) or "none"
    packing = (f"{layout.per_actor} devices per actor process"
               if layout.per_actor > 1 else "one actor per device")
    console.print(f"[bold]ray-backup demo[/]: {layout.devices} simulated devices on 127.0.0.1 "
                  f"({', '.join(f'{n} × {v}' for v, n in sorted(versions.items()))}); "
                  f"faulty on purpose: {faults}; {packing}; snapshots → {out}")


def _watch(console, supervisor, log_: SnapshotLog, duration: float, layout: Plan, dashboard):
    import ray

    metrics = ray.get(supervisor.metrics_address.remote())
    header = (f"[bold]fleet[/] · {layout.devices} devices in {layout.actors} actors · "
              f"backup every {SCHEDULE_ENV['CONFIG_BACKUP_INTERVAL']} s · "
              f"Ray dashboard {dashboard or 'off'} · metrics http://{metrics}/metrics · Ctrl-C stops")
    max_rows = max(5, (console.height or 40) - 8)
    started = time.monotonic()
    poll = Poll([], {}, 0.0)
    last_line = 0.0
    with Live(console=console, refresh_per_second=4, transient=False) as live:
        while True:
            poll = _poll(supervisor, poll, time.monotonic() - started)
            log_.poll()
            live.update(render(poll, log_, duration, header, max_rows))
            if not console.is_terminal and poll.elapsed - last_line >= 10:
                last_line = poll.elapsed  # logs and CI: a plain line now and then
                console.print(_progress_line(poll, log_, duration))
            if poll.elapsed >= duration:
                return poll
            time.sleep(min(POLL_S, max(0.0, duration - poll.elapsed)))


def _poll(supervisor, previous: Poll, elapsed: float) -> Poll:
    import ray

    try:
        rows, text = ray.get([supervisor.status.remote(), supervisor.metrics_text.remote()],
                             timeout=10)
        return Poll(rows, backup_outcomes(text), elapsed)
    except (ray.exceptions.RayError, TimeoutError) as exc:  # show the last view, say why
        log.warning("status not available: %s", exc)
        return Poll(previous.rows, previous.outcomes, elapsed)


def _dashboard_url() -> str | None:
    try:
        from ray._private.worker import get_dashboard_url  # no public accessor after init

        url = get_dashboard_url()
        return f"http://{url}" if url and "://" not in url else url or None
    except Exception:
        return None


def _stop(console: Console, mutator: Mutator, sim, workdir) -> None:
    """Stop the actors, Ray and the simulator, each even if the one before failed."""
    import ray

    from ray_backup import job

    console.print()
    console.print("stopping: device actors, local Ray, simulator…")
    mutator.stop()
    steps = [("actors", lambda: job.stop_all(grace_s=2.0) if ray.is_initialized() else None),
             ("ray", ray.shutdown), ("simulator", sim.stop), ("inventory", workdir.cleanup)]
    for name, step in steps:
        try:
            step()
        except (Exception, KeyboardInterrupt) as exc:  # a second Ctrl-C skips one step, not all
            console.print(f"[yellow]stopping {name}: {type(exc).__name__}: {exc}")


def _summary(console: Console, state: dict, layout: Plan, out: Path, mutator: Mutator) -> int:
    log_: SnapshotLog | None = state["log"]
    if log_ is not None:
        log_.poll()
    snapshots = sum(log_.snapshots.values()) if log_ else 0
    changes = sum(log_.changes.values()) if log_ else 0
    rows = state["poll"].rows if state["poll"] else []
    by_status = Counter(r["status"] for r in rows)
    console.print()
    console.print("[bold]demo " + ("interrupted" if state["interrupted"] else "finished"))
    console.print(f"  {snapshots} snapshots of {len(log_.snapshots) if log_ else 0} devices, "
                  f"{changes} configuration changes detected ({mutator.count} made)")
    if by_status:
        console.print("  last status: " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())))
    actors = "device:<id>" if layout.per_actor == 1 else "devices:<hex> (packed)"
    console.print(f"  backups in {out}/: <device id>.rsc is each device's latest configuration, "
                  f"{HISTORY_FILE} every snapshot as the Kafka event would carry it")
    console.print("  dashboard: the Ray dashboard"
                  + (f" ({state['dashboard']})" if state["dashboard"] else "")
                  + " stopped with the demo; run a longer one (--duration 600) and open it while it "
                  f"runs: Actors shows supervisor, ssh-semaphore and {actors} (its token: "
                  "`ray get-auth-token`). Grafana: import deploy/grafana/ray-backup-dashboard.json")
    console.print("  no processes are left running; `ray-backup run` runs the same job on a real fleet")
    return 0 if snapshots else 1


def show_history(console: Console, settings, out: Path, names: dict[str, str]) -> None:
    """The run's most changed device: its versions and its last change, secrets masked."""
    from ray_backup.history import open_history
    from ray_backup.history.commands import format_diff, format_history
    from ray_backup.history.views import HistoryViews

    store = open_history(settings, output_dir=out)
    try:
        views = HistoryViews(store, names)
        counts = {device: len(store.versions(device)) for device, _ in store.latest()}
        if not counts or max(counts.values()) < 2:
            console.print("  no configuration changed between two backups of one device this time")
            return
        device = max(sorted(counts), key=lambda d: counts[d])
        versions = store.versions(device, limit=5)
        console.print()
        console.print(f"[bold]history of {views.label(device)}[/] ({counts[device]} versions, "
                      "newest first; secret values masked):")
        console.print("\n".join(format_history(versions)), markup=False, highlight=False)
        console.print()
        change = views.diff(device)
        console.print(Text.from_ansi(format_diff(change, views.label(device), colour=True)))
        console.print(f"  more: ray-backup history {device} --output {out}   "
                      f"(diff, show, search the same way)")
    finally:
        store.close()
