"""DeviceActors: which device actor runs which devices, and the calls that change it.

The supervisor owns one and decides *when* (each reconcile); this decides *how*:
create, retire, check, adopt, balance, and bring every actor to the wanted rows.

Each record keeps what its actor is *known* to run (``running``, ``sent``), so a
call that failed is simply made again at the next ``sync``: nothing is lost when
one actor does not answer, and one dead actor never stops the calls to the rest.
The Ray calls go through ``RayActorOps`` so the bookkeeping is tested without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

import ray

from ray_backup import constants as C
from ray_backup.actors.placement import auto_layout, least_loaded, moves_to_balance
from ray_backup.models import Device

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0


@dataclass
class DeviceActorRecord:
    """A device actor as the supervisor knows it.

    ``device_ids``: the devices it should run. ``running``: the devices it last said
    (or was created with) it runs. ``sent``: the inventory row it is known to have
    for each. What differs is mended by the next ``DeviceActors.sync``.
    """

    name: str
    handle: object
    device_ids: set[str] = field(default_factory=set)
    node_id: str | None = None
    incarnation: str | None = None
    running: set[str] = field(default_factory=set)
    sent: dict[str, Device] = field(default_factory=dict)
    spool_pending: int | None = None


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
    """The fleet's device actors, by name."""

    def __init__(self, devices_per_actor: int | str, ops: RayActorOps | None = None) -> None:
        self.setting = devices_per_actor  # a count, or "auto": chosen for the fleet at each add
        self.per_actor = 1 if devices_per_actor == "auto" else int(devices_per_actor)
        self.ops = ops or RayActorOps()
        self.records: dict[str, DeviceActorRecord] = {}

    def __len__(self) -> int:
        return len(self.records)

    def hosted(self) -> dict[str, DeviceActorRecord]:
        """Device id → the record of the actor that should run it."""
        return {i: r for r in self.records.values() for i in r.device_ids}

    def record_of(self, device_id: str) -> DeviceActorRecord | None:
        return self.hosted().get(device_id)

    def spool_pending(self) -> int:
        """Undelivered snapshots in the spools, as the actors said at the last check. The
        actors of a node share its spool: each node counts once (its latest figure)."""
        by_node: dict[str | None, int] = {}
        for record in self.records.values():
            if record.spool_pending is not None:
                by_node[record.node_id] = max(by_node.get(record.node_id, 0), record.spool_pending)
        return sum(by_node.values())

    # -- bring the actors to the wanted rows -----------------------------------------------
    async def sync(self, wanted: dict[str, Device]) -> dict[str, int]:
        """Stop what is not wanted, start what is missing, send rows the actors lack."""
        for record in self.records.values():
            record.device_ids &= set(wanted)
        removed = await self._remove_strays(wanted)
        new = [d for i, d in wanted.items() if i not in self.hosted()]
        await self._add(new)
        updated = await self._send_rows(wanted)
        return {"added": len(new), "removed": removed, "updated": updated}

    async def _remove_strays(self, wanted: dict[str, Device]) -> int:
        """Stop the loops an actor should not run; retire actors left with nothing to run."""
        calls = [
            (record, device_id)
            for record in self.records.values()
            for device_id in sorted(record.running - record.device_ids)
        ]
        # A device that runs elsewhere too (a duplicate) keeps its state for that other loop.
        outcomes = await _gather(
            r.handle.remove.remote(i, i not in wanted) for r, i in calls
        )
        removed = 0
        for (record, device_id), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("device actor %s: stopping %s failed, retried at the next "
                            "reconcile: %s", record.name, device_id, _short(outcome))
                continue
            record.running.discard(device_id)
            record.sent.pop(device_id, None)
            removed += 1
        for record in [r for r in self.records.values() if not r.device_ids]:
            await self._retire(record)
        return removed

    async def _send_rows(self, wanted: dict[str, Device]) -> int:
        """Send each actor the rows it lacks, all at once (a fleet-wide credential rotation is
        one round trip); a failed call leaves the row unsent, for the next reconcile."""
        calls = [
            (record, wanted[device_id])
            for record in self.records.values()
            for device_id in sorted(record.device_ids)
            if record.sent.get(device_id) != wanted[device_id]
        ]
        outcomes = await _gather(r.handle.update.remote(d) for r, d in calls)
        sent = 0
        for (record, device), outcome in zip(calls, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("device actor %s: sending %s failed, retried at the next "
                            "reconcile: %s", record.name, device.id, _short(outcome))
                continue
            record.sent[device.id] = device
            record.running.add(device.id)
            sent += 1
        return sent

    async def _add(self, devices: list[Device]) -> None:
        """Give new devices an actor: room in a packed actor first, else a new actor."""
        if not devices:
            return
        nodes = await asyncio.to_thread(self.ops.nodes)
        if self.setting == "auto":
            self.per_actor = auto_layout(len(self.hosted()) + len(devices), len(nodes)).per_actor
        load = Counter({n: 0 for n in nodes})
        for record in self.records.values():
            load[record.node_id] += len(record.device_ids)
        queue = list(devices)
        if self.per_actor > 1:
            for record in self.records.values():  # _send_rows starts their loops
                while queue and len(record.device_ids) < self.per_actor:
                    record.device_ids.add(queue.pop(0).id)
        created = []
        while queue:
            batch, queue = queue[: self.per_actor], queue[self.per_actor :]
            node = least_loaded(nodes, load) if nodes else None
            load[node] += len(batch)
            # A device's own name only while no actor has it (one packed when auto grew).
            name = (batch[0].actor_name
                    if self.per_actor == 1 and batch[0].actor_name not in self.records
                    else f"{C.DEVICE_GROUP_PREFIX}{uuid.uuid4().hex[:12]}")
            created.append(self.create(name, batch, node))
        await asyncio.gather(*created)

    async def create(self, name: str, devices: list[Device], node_id: str | None) -> None:
        handle = self.ops.create(name, devices, node_id)
        ids = {d.id for d in devices}
        record = DeviceActorRecord(name, handle, set(ids), node_id, running=set(ids),
                                   sent={d.id: d for d in devices})
        self.records[name] = record
        try:
            info = await asyncio.wait_for(handle.ping.remote(), PING_TIMEOUT_S)
        except Exception as exc:
            log.warning("device actor %s not up yet: %s", name, _short(exc))
            return
        record.node_id, record.incarnation = info["node_id"], info["incarnation"]

    async def _retire(self, record: DeviceActorRecord, grace_s: float = 10.0) -> None:
        self.records.pop(record.name, None)
        try:
            await asyncio.wait_for(record.handle.stop.remote(grace_s), grace_s + 5)
        except Exception as exc:
            log.warning("device actor %s did not stop cleanly: %s", record.name, _short(exc))
        try:
            self.ops.kill(record.handle)
        except Exception as exc:
            log.warning("device actor %s: kill failed: %s", record.name, _short(exc))

    async def retire_all(self, grace_s: float) -> int:
        records = list(self.records.values())
        await asyncio.gather(*(self._retire(r, grace_s) for r in records))
        return len(records)

    # -- check, adopt, balance ---------------------------------------------------------------
    async def check(self) -> None:
        """Ping every actor: (re)start its loops, learn its node and what it runs.

        An actor that is gone is forgotten (``sync`` recreates its devices); one that
        Ray restarted lost the rows sent after its creation, so they are sent again.
        """
        records = list(self.records.values())
        outcomes = await _gather(
            asyncio.wait_for(r.handle.ping.remote(), PING_TIMEOUT_S) for r in records
        )
        for record, info in zip(records, outcomes, strict=True):
            if gone(info):
                log.warning("device actor %s is gone; its devices will be recreated", record.name)
                self.records.pop(record.name, None)
            elif isinstance(info, BaseException):
                log.warning("device actor %s did not answer: %s", record.name, _short(info))
            else:
                self._learn(record, info)

    def _learn(self, record: DeviceActorRecord, info: dict) -> None:
        if record.incarnation is not None and info["incarnation"] != record.incarnation:
            log.info("device actor %s restarted on node %s", record.name, info["node_id"][:8])
            record.sent.clear()
        record.node_id, record.incarnation = info["node_id"], info["incarnation"]
        record.running = set(info["device_ids"])
        record.spool_pending = info.get("spool_pending")
        record.sent = {i: d for i, d in record.sent.items() if i in record.running}

    async def adopt(self) -> list[dict]:
        """Take over live device actors this supervisor does not know (after a restart, or
        one that did not answer before); return their status rows.

        A device found in two actors (packed mode: an actor that came back after its
        devices had been given to another) stays with the first; ``sync`` stops it in the
        other without touching its state, and retires an actor left with nothing.
        """
        names = [n for n in await asyncio.to_thread(self.ops.names) if n not in self.records]
        rows: list[dict] = []
        for name in sorted(names):
            try:
                handle = self.ops.lookup(name)
                info = await asyncio.wait_for(handle.ping.remote(), PING_TIMEOUT_S)
                found = await asyncio.wait_for(handle.status.remote(), CALL_TIMEOUT_S)
            except Exception as exc:
                log.warning("could not adopt device actor %s: %s", name, _short(exc))
                continue
            taken = set(self.hosted())
            record = DeviceActorRecord(name, handle)
            self._learn(record, info)
            record.device_ids = record.running - taken
            if record.running & taken:
                log.warning("device actor %s runs %d devices another actor runs; stopping them "
                            "there", name, len(record.running & taken))
            self.records[name] = record
            rows += [r for r in found if r["device_id"] in record.device_ids]
        if names:
            log.info("adopted %d live device actors", len(self.records))
        return rows

    async def balance(self, wanted: dict[str, Device]) -> int:
        """Move single-device actors until every node runs about as many; return the moves."""
        nodes = await asyncio.to_thread(self.ops.nodes)
        layout = {r.name: (r.node_id, len(r.device_ids)) for r in self.records.values()}
        moves = moves_to_balance(nodes, layout)
        for name, target in moves:
            record = self.records[name]
            rows = [wanted[i] for i in record.device_ids if i in wanted]
            await self._retire(record)
            await self.create(name, rows, target)
        return len(moves)


async def _gather(calls) -> list:
    """Every call's result or exception: one failing actor never cancels the others."""
    return await asyncio.gather(*calls, return_exceptions=True)


def gone(outcome: object) -> bool:
    """A ping outcome meaning the actor will not come back by itself."""
    if isinstance(outcome, ray.exceptions.ActorUnschedulableError):
        return True  # its node died: hard affinity keeps Ray from restarting it elsewhere
    if isinstance(outcome, ray.exceptions.ActorUnavailableError):
        return False  # restarting or unreachable for now: replacing it would run its devices twice
    return isinstance(outcome, ray.exceptions.RayActorError) and "restarting" not in str(outcome).lower()


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
