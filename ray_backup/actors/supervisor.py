"""BackupSupervisor: keeps exactly one loop per inventory device, and the fleet's status.

Each reconcile is level-triggered and idempotent: read the inventory, check the
device actors, start, stop and update them, even out the nodes. Every step has
its own error handling, so one failing step never stops the others, and a
failed inventory read keeps the current actors running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import ray

from ray_backup import constants as C
from ray_backup import logs
from ray_backup.actors import placement
from ray_backup.actors.device_actors import DeviceActors
from ray_backup.actors.selfstart import call_self_soon
from ray_backup.inventory.base import open_inventory
from ray_backup.metrics import FleetMetrics, Freshness
from ray_backup.models import Device
from ray_backup.settings import Settings

log = logging.getLogger(__name__)

class BackupSupervisor:
    def __init__(self) -> None:
        self.settings = Settings.load()
        logs.setup(self.settings.log_level)
        self._inventory = open_inventory(self.settings)
        self.devices: dict[str, Device] = {}  # the inventory rows last read
        self._inventory_read = False
        self.actors = DeviceActors(self.settings.devices_per_actor)
        self.rows: dict[str, dict] = {}
        self._semaphore_stats: dict = {}
        self._known_errors: set[str] = set()
        self._first_seen: dict[str, float] = {}  # wall clock, for devices never backed up
        self.metrics = FleetMetrics(
            lambda: list(self.rows.values()), lambda: self._semaphore_stats,
            freshness=lambda: Freshness(self.settings.backup_interval, self._first_seen),
            spool_pending=self.actors.spool_pending,
        )
        self._metrics_server = None
        self._task: asyncio.Task | None = None
        self._starting: asyncio.Task | None = None
        self._reconcile_lock: asyncio.Lock | None = None
        self._fit_warned = False
        self._driver_lease_s: float | None = None
        self._last_heartbeat = time.monotonic()
        self._last_reconcile = 0.0
        self._stopped = False  # by shutdown(), until the next start()
        call_self_soon("start")

    def __repr__(self) -> str:
        return f"BackupSupervisor({len(self.devices)} devices, {len(self.actors)} actors)"

    # -- lifecycle ---------------------------------------------------------------
    async def start(self, driver_lease_s: float | None = None) -> dict:
        """Serve metrics, re-adopt live device actors, start reconciling. Idempotent.

        ``driver_lease_s``: outside service mode, the driver must call ``heartbeat()``
        at least this often; when it stops (killed, or `ray job stop` gave up
        waiting), the supervisor stops the fleet by itself.
        """
        self.heartbeat(driver_lease_s)
        if self._starting is None or (self._starting.done() and self._starting.exception()):
            self._starting = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._starting)
        if self._stopped or self._task is None or self._task.done():
            # A driver stopped the fleet (`shutdown`) but died before removing this actor
            # (`ray job stop` racing its shutdown): reconcile again, from now on.
            self._stopped = False
            await self.reconcile()
            self._ensure_running()
        # The lease counts from here: start-up may take longer than the lease (many
        # actors to create), and the driver starts its heartbeats when this returns.
        self.heartbeat(driver_lease_s)
        return {
            "devices": len(self.devices),
            "actors": len(self.actors),
            "metrics": self.metrics_address(),
            "settings_seen": sorted(k for k, v in self.settings.summary().items() if v),
        }

    async def _start(self) -> None:
        self._reconcile_lock = asyncio.Lock()
        self._serve_metrics()
        await self.reconcile()
        self.heartbeat()  # start-up done: the lease counts from now
        self._ensure_running()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Watch the driver's lease; reconcile every DEVICE_REFRESH_SECONDS unless stopped."""
        while True:
            await asyncio.sleep(min(self.settings.device_refresh, 5.0))
            if await self._driver_gone():
                await self._stop_orphaned_fleet()
                return
            if self._stopped:
                continue  # shut down by the driver: only the watchdog is left to run
            # mikrotik_config_backup_active and ray_backup_semaphore_waiters read these.
            await self._step("semaphore stats", self._poll_semaphore)
            if time.monotonic() - self._last_reconcile < self.settings.device_refresh:
                continue
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed")

    def heartbeat(self, driver_lease_s: float | None = None) -> None:
        """The driver is alive (see ``start``). It repeats its lease each time, so that a
        supervisor restarted by Ray keeps watching for an orphaned fleet."""
        if driver_lease_s is not None:
            self._driver_lease_s = driver_lease_s
        self._last_heartbeat = time.monotonic()

    async def _driver_gone(self) -> bool:
        lease = self._driver_lease_s
        if lease is None or time.monotonic() - self._last_heartbeat <= lease:
            return False
        # Heartbeats may be queued behind a busy event loop: let them in, then decide.
        await asyncio.sleep(1.0)
        return time.monotonic() - self._last_heartbeat > lease

    async def _stop_orphaned_fleet(self) -> None:
        log.warning("the job's driver stopped without stopping the fleet; stopping it now")
        await self.shutdown()
        self.metrics.close()
        try:
            ray.kill(ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE), no_restart=True)
        except ValueError:
            pass
        # exit_actor() only ends the calling task here (a background task of an async actor).
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def shutdown(self, grace_s: float = 10.0) -> int:
        """Stop every device actor cleanly and remove it; return how many were removed.

        Reconciling stops until the next ``start``; the watchdog keeps running, so a
        driver that dies before it removes this actor still has it removed by its lease.
        """
        self._stopped = True
        if self._reconcile_lock is None:
            return await self.actors.retire_all(grace_s)
        async with self._reconcile_lock:  # a reconcile under way finishes first
            return await self.actors.retire_all(grace_s)

    def _serve_metrics(self) -> None:
        if self._metrics_server is not None:
            return
        from prometheus_client import start_http_server

        try:
            self._metrics_server, _ = start_http_server(
                self.settings.metrics_port, addr="0.0.0.0", registry=self.metrics.registry
            )
        except OSError as exc:
            log.error("metrics endpoint not started on port %s: %s", self.settings.metrics_port, exc)

    def metrics_address(self) -> str | None:
        if self._metrics_server is None:
            return None
        ip = ray.util.get_node_ip_address()
        return f"{ip}:{self._metrics_server.server_port}"

    # -- reconcile -------------------------------------------------------------------
    async def reconcile(self) -> dict:
        assert self._reconcile_lock is not None, "start() first"
        async with self._reconcile_lock:
            if self._stopped:
                return {"stopped": True}
            started = time.monotonic()
            summary = {"added": 0, "removed": 0, "updated": 0, "moved": 0, "inventory_ok": False}
            try:
                inventory = await asyncio.to_thread(self._inventory.load)
            except Exception as exc:
                self.metrics.reconcile_errors.inc()
                log.error("inventory read failed, keeping %d device actors: %s", len(self.actors), exc)
                inventory = None
            if inventory is not None:
                summary["inventory_ok"] = True
                self._report_rows(inventory.errors, inventory.skipped)
                self._take(inventory.devices)
            await self._step("adopt actors", self._adopt)
            await self._step("check actors", self._check_actors)
            if self._inventory_read:
                # From the last rows read, also while the inventory is down: an actor lost
                # meanwhile (its node died) is recreated, a failed call is made again.
                await self._step("sync actors", self._sync, summary)
            await self._step("balance nodes", self._balance, summary)
            await self._step("semaphore stats", self._poll_semaphore)
            self._last_reconcile = time.monotonic()
            elapsed = self._last_reconcile - started
            self.metrics.reconcile_duration.observe(elapsed)
            summary["seconds"] = round(elapsed, 3)
            log.debug("reconcile: %s", summary)
            return summary

    async def _step(self, name: str, fn, *args) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("reconcile step %r failed", name)

    def _report_rows(self, errors: list[str], skipped: list[str]) -> None:
        """Each bad or skipped row once, not on every reconcile."""
        for line in sorted(set(errors) - self._known_errors):
            log.error("inventory: %s", line)
        for line in sorted(set(skipped) - self._known_errors):
            log.info("inventory: %s", line)
        self._known_errors = set(errors) | set(skipped)

    def _take(self, devices: list[Device]) -> None:
        """A successful inventory read: these are the rows to run from now on."""
        wanted = {d.id: d for d in devices}
        for device_id in [i for i in self.rows if i not in wanted]:
            self.rows.pop(device_id, None)
            self._first_seen.pop(device_id, None)
        now = time.time()
        for device in devices:
            self.rows.setdefault(device.id, _pending_row(device))
            self._first_seen.setdefault(device.id, now)
        self.devices = wanted
        self._inventory_read = True
        self._warn_if_not_fitting(len(wanted))

    async def _sync(self, summary: dict) -> None:
        for key, count in (await self.actors.sync(self.devices)).items():
            summary[key] += count

    async def _adopt(self) -> None:
        for row in await self.actors.adopt():  # their last status, not "pending"
            if row["device_id"] in self.devices or not self._inventory_read:
                self.rows[row["device_id"]] = row

    async def _check_actors(self) -> None:
        await self.actors.check()
        for device_id, record in self.actors.hosted().items():
            if device_id in self.rows:
                self.rows[device_id]["node_id"] = record.node_id

    async def _balance(self, summary: dict) -> None:
        summary["moved"] += await self.actors.balance(self.devices)

    async def _poll_semaphore(self) -> None:
        handle = ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
        self._semaphore_stats = await handle.stats.remote()

    def _warn_if_not_fitting(self, count: int) -> None:
        """Said once, at the first inventory read: how the fleet is laid out (auto), or
        that the chosen packing will not fit the cluster's memory."""
        if self._fit_warned or not count:
            return
        self._fit_warned = True
        resources = ray.cluster_resources()
        if self.settings.devices_per_actor == "auto":
            nodes = len(self.actors.ops.nodes()) or 1
            layout = placement.auto_layout(count, nodes)
            log.info("%s", layout.describe())
            return
        warning = placement.fit_warning(
            count, self.settings.devices_per_actor, resources.get("memory", 0)
        )
        if warning:
            log.warning("%s", warning)

    # -- served to device actors, the CLI and notebooks ------------------------------
    def report(self, row: dict) -> None:
        device = self.devices.get(row["device_id"])
        if device is None:
            return
        self.rows[device.id] = row
        self.metrics.observe(row)
        trusted = row.get("host_key_fingerprint")
        if trusted and device.host_key_fingerprint is None:
            # Trusted on first use just now; the next inventory read will say so too, but
            # an actor restarted before then must not start from the keyless row.
            self.devices[device.id] = dataclasses.replace(device, host_key_fingerprint=trusted)

    def status(self) -> list[dict]:
        return sorted(self.rows.values(), key=lambda r: (r.get("hostname") or "", r["device_id"]))

    def current_rows(self, device_ids: list[str]) -> dict[str, Device]:
        """Today's inventory rows, for device actors (re)starting their loops."""
        return {i: self.devices[i] for i in device_ids if i in self.devices}

    async def trigger(self, device_id: str) -> dict:
        host = self.actors.record_of(device_id)
        if host is None:
            return {"device_id": device_id, "status": C.STATUS_FAILED, "sha256_hash": None,
                    "error": f"unknown device {device_id}"}
        return await host.handle.trigger.remote(device_id)

    def metrics_text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.metrics.registry).decode()

    async def record_host_key(self, device_id: str, fingerprint: str) -> bool:
        """Trust on first use for device actors on any node: this process is the one
        writer of a YAML inventory's host key sidecar. True when ``fingerprint`` is now
        the stored key (storing it again moves only its last-verified time)."""
        return await asyncio.to_thread(self._inventory.record_host_key, device_id, fingerprint)


def _pending_row(device: Device) -> dict:
    return {
        "device_id": device.id, "hostname": device.hostname, "host": device.host,
        "port": device.port, "routeros_version": device.routeros_version,
        "status": C.STATUS_PENDING, "last_attempt_at": None, "last_success_at": None,
        "last_error_kind": None, "last_error": None, "consecutive_failures": 0,
        "backoff_until": None, "next_due": None, "sha256_hash": None, "changed": None,
    }
