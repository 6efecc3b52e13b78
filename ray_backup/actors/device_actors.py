"""DeviceActors: which device actor hosts which devices, and the calls that change it.

The supervisor owns one. It creates, retires, checks, balances and re-adopts the
device actors; the supervisor decides *when* (reconcile), this decides *how*.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

import ray

from ray_backup import constants as C
from ray_backup.actors.placement import least_loaded, moves_to_balance
from ray_backup.models import Device

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 30.0


@dataclass
class DeviceActorRecord:
    """A device actor as the supervisor knows it."""

    name: str
    handle: object
    device_ids: set[str] = field(default_factory=set)
    node_id: str | None = None
    incarnation: str | None = None


class RayActorOps:
    """The Ray calls the bookkeeping makes (tests pass a fake)."""

    def create(self, name: str, devices: list[Device], node_id: str | None):
        from ray_backup.actors import options  # options imports the actor classes

        return options.device_actor(name, devices, node_id)

    def lookup(self, name: str):
        return ray.get_actor(name, namespace=C.NAMESPACE)

    def names(self) -> list[str]:
        return [
            a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == C.NAMESPACE
            and a["name"].startswith((C.DEVICE_ACTOR_PREFIX, C.DEVICE_GROUP_PREFIX))
        ]

    def kill(self, handle) -> None:
        ray.kill(handle, no_restart=True)

    def nodes(self) -> list[str]:
        return sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))


class DeviceActors:
    """The device actors of the fleet, by name."""

    def __init__(self, devices_per_actor: int, ops: RayActorOps | None = None) -> None:
        self.per_actor = devices_per_actor
        self.ops = ops or RayActorOps()
        self.records: dict[str, DeviceActorRecord] = {}
        self.devices: dict[str, Device] = {}

    def __len__(self) -> int:
        return len(self.records)

    def hosted(self) -> dict[str, DeviceActorRecord]:
        """Device id → the record of the actor hosting it."""
        return {i: r for r in self.records.values() for i in r.device_ids}

    def record_of(self, device_id: str) -> DeviceActorRecord | None:
        return self.hosted().get(device_id)

    async def sync(self, wanted: dict[str, Device]) -> dict[str, int]:
        summary = {"added": 0, "removed": 0, "updated": 0}
        for device_id in [i for i in self.devices if i not in wanted]:
            self.devices.pop(device_id, None)
            await self.remove(device_id)
            summary["removed"] += 1
        hosted = self.hosted()
        new = [d for d in wanted.values() if d.id not in hosted]
        changed = [d for d in wanted.values() if d.id in hosted and self.devices.get(d.id) != d]
        self.devices = dict(wanted)
        updates = [hosted[d.id].handle.update.remote(d) for d in changed]
        await asyncio.gather(*updates)
        summary["updated"] += len(updates)
        await self.add(new)
        summary["added"] += len(new)
        return summary

    # -- create and retire ---------------------------------------------------------------
    async def add(self, devices: list[Device]) -> None:
        if not devices:
            return
        nodes = await asyncio.to_thread(self.ops.nodes)
        load = Counter({n: 0 for n in nodes})
        for record in self.records.values():
            load[record.node_id] += len(record.device_ids)
        created = []
        if self.per_actor == 1:
            for device in devices:
                node = least_loaded(nodes, load)
                load[node] += 1
                created.append(self.create(device.actor_name, [device], node))
        else:
            open_records = [r for r in self.records.values() if len(r.device_ids) < self.per_actor]
            queue = list(devices)
            for record in open_records:
                while queue and len(record.device_ids) < self.per_actor:
                    device = queue.pop(0)
                    await record.handle.update.remote(device)
                    record.device_ids.add(device.id)
            while queue:
                batch, queue = queue[: self.per_actor], queue[self.per_actor :]
                node = least_loaded(nodes, load)
                load[node] += len(batch)
                name = f"{C.DEVICE_GROUP_PREFIX}{uuid.uuid4().hex[:12]}"
                created.append(self.create(name, batch, node))
        await asyncio.gather(*created)

    async def create(self, name: str, devices: list[Device], node_id: str | None) -> None:
        handle = self.ops.create(name, devices, node_id)
        record = DeviceActorRecord(name, handle, {d.id for d in devices}, node_id)
        self.records[name] = record
        try:
            info = await asyncio.wait_for(handle.ping.remote(), PING_TIMEOUT_S)
        except Exception as exc:
            log.warning("device actor %s not up yet: %s", name, exc)
            return
        record.node_id, record.incarnation = info["node_id"], info["incarnation"]

    async def remove(self, device_id: str) -> None:
        record = self.record_of(device_id)
        if record is None:
            return
        record.device_ids.discard(device_id)
        await record.handle.remove.remote(device_id)
        if not record.device_ids:
            await self._retire(record)
            self.records.pop(record.name, None)

    async def retire_all(self, grace_s: float) -> int:
        records = list(self.records.values())
        await asyncio.gather(*(self._retire(r, grace_s) for r in records), return_exceptions=True)
        self.records.clear()
        return len(records)

    # -- check, balance, adopt -------------------------------------------------------------
    async def check(self) -> None:
        """Ping every actor: (re)start its loops, learn its node, resend rows after a restart."""
        records = list(self.records.values())
        results = await asyncio.gather(
            *(asyncio.wait_for(r.handle.ping.remote(), PING_TIMEOUT_S) for r in records),
            return_exceptions=True,
        )
        for record, info in zip(records, results, strict=True):
            if gone(info):
                log.warning("device actor %s is gone; its devices will be recreated", record.name)
                self.records.pop(record.name, None)
                continue
            if isinstance(info, BaseException):
                log.warning("device actor %s did not answer: %s", record.name, info)
                continue
            restarted = record.incarnation is not None and info["incarnation"] != record.incarnation
            record.node_id, record.incarnation = info["node_id"], info["incarnation"]
            if restarted:
                log.info("device actor %s restarted on node %s", record.name, record.node_id[:8])
                for device_id in record.device_ids:
                    if device_id in self.devices:
                        await record.handle.update.remote(self.devices[device_id])

    async def balance(self, devices: dict[str, Device]) -> int:
        """Move single-device actors until every node hosts about as many; return the moves."""
        nodes = await asyncio.to_thread(self.ops.nodes)
        layout = {r.name: (r.node_id, len(r.device_ids)) for r in self.records.values()}
        moves = moves_to_balance(nodes, layout)
        for name, target in moves:
            record = self.records[name]
            rows = [devices[i] for i in record.device_ids if i in devices]
            await self._retire(record)
            await self.create(name, rows, target)
        return len(moves)

    async def adopt(self) -> list[dict]:
        """After a restart: take over the device actors that are still alive; their status rows."""
        names = self.ops.names()
        rows: list[dict] = []
        for name in names:
            try:
                handle = self.ops.lookup(name)
                info = await asyncio.wait_for(handle.ping.remote(), PING_TIMEOUT_S)
                rows += await handle.status.remote()
            except Exception as exc:
                log.warning("could not adopt device actor %s: %s", name, exc)
                continue
            self.records[name] = DeviceActorRecord(
                name, handle, set(info["device_ids"]), info["node_id"], info["incarnation"]
            )
        if names:
            log.info("re-adopted %d live device actors", len(self.records))
        return rows

    async def _retire(self, record: DeviceActorRecord, grace_s: float = 10.0) -> None:
        try:
            await asyncio.wait_for(record.handle.stop.remote(grace_s), grace_s + 5)
        except Exception as exc:
            log.warning("device actor %s did not stop cleanly: %s", record.name, exc)
        self.ops.kill(record.handle)


def gone(outcome: object) -> bool:
    """A ping outcome meaning the actor will not come back by itself."""
    if isinstance(outcome, ray.exceptions.ActorUnschedulableError):
        return True  # its node died: hard affinity keeps Ray from restarting it elsewhere
    return isinstance(outcome, ray.exceptions.RayActorError) and "restarting" not in str(outcome).lower()
