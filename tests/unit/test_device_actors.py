"""The supervisor's bookkeeping of device actors (``DeviceActors``), with fake actor handles.

Real Ray behaviour (creation, restarts, lost nodes) is in
``tests/integration/test_actor_system.py``; this is the logic of what to call when.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import ray

from ray_backup.actors.device_actors import DeviceActors
from ray_backup.models import CredentialRef, Device


def device(n: int) -> Device:
    return Device(id=str(uuid.UUID(int=n)), host="127.0.0.1", port=22000 + n, hostname=f"r{n}",
                  credentials=CredentialRef(inventory_file="inv.yaml", digest="first"))


def rotated(d: Device) -> Device:
    return dataclasses.replace(d, credentials=CredentialRef(inventory_file="inv.yaml",
                                                            digest="rotated"))


class Method:
    """``handle.method.remote(...)`` as Ray offers it: returns an awaitable."""

    def __init__(self, actor: FakeActor, name: str) -> None:
        self._actor, self._name = actor, name

    def remote(self, *args):
        return self._actor.call(self._name, *args)


class FakeActor:
    """A device actor: runs loops for rows it was created with or sent."""

    def __init__(self, name: str, devices: list[Device], node: str | None) -> None:
        self.name, self.node = name, node
        self.rows = {d.id: d for d in devices}
        self.incarnation = uuid.uuid4().hex
        self.dead = False
        self.fail: dict[str, int] = {}  # method → how many calls still fail
        self.forgotten: list[str] = []
        self.spool: int | None = None

    def __getattr__(self, name):
        if name in {"ping", "update", "remove", "stop", "status"}:
            return Method(self, name)
        raise AttributeError(name)

    async def call(self, name, *args):
        if self.dead:
            raise ray.exceptions.ActorDiedError()
        if self.fail.get(name):
            self.fail[name] -= 1
            raise ray.exceptions.ActorUnavailableError("busy", None)
        if name == "ping":
            return {"name": self.name, "incarnation": self.incarnation, "node_id": self.node,
                    "device_ids": sorted(self.rows), "spool_pending": self.spool}
        if name == "update":
            self.rows[args[0].id] = args[0]
        elif name == "remove":
            self.rows.pop(args[0], None)
            if args[1]:
                self.forgotten.append(args[0])
        elif name == "status":
            return [{"device_id": i, "status": "success"} for i in self.rows]
        return None

    def restart(self, devices: list[Device]) -> None:
        """What Ray does: the same name, a new process started from the creation arguments."""
        self.rows = {d.id: d for d in devices}
        self.incarnation = uuid.uuid4().hex


class FakeOps:
    def __init__(self, nodes=("node-a", "node-b")) -> None:
        self.actors: dict[str, FakeActor] = {}
        self.alive = list(nodes)

    def create(self, name, devices, node_id):
        if name not in self.actors or self.actors[name].dead:
            self.actors[name] = FakeActor(name, devices, node_id)
        return self.actors[name]

    def lookup(self, name):
        return self.actors[name]

    def names(self):
        return sorted(n for n, a in self.actors.items() if not a.dead)

    def kill(self, handle):
        handle.dead = True

    def nodes(self):
        return list(self.alive)

    def running(self) -> dict[str, list[str]]:
        """Device id → the live actors running it."""
        out: dict[str, list[str]] = {}
        for actor in self.actors.values():
            if not actor.dead:
                for device_id in actor.rows:
                    out.setdefault(device_id, []).append(actor.name)
        return out


def run(coro):
    return asyncio.run(coro)


def wanted(*devices: Device) -> dict[str, Device]:
    return {d.id: d for d in devices}


def test_a_failed_update_is_sent_again_at_the_next_sync():
    ops = FakeOps()
    fleet = DeviceActors(1, ops)
    d1, d2 = device(1), device(2)
    run(fleet.sync(wanted(d1, d2)))
    new = rotated(d1)
    ops.actors[d1.actor_name].fail["update"] = 1
    run(fleet.sync(wanted(new, d2)))
    assert ops.actors[d1.actor_name].rows[d1.id] == d1  # the call failed
    run(fleet.sync(wanted(new, d2)))
    assert ops.actors[d1.actor_name].rows[d1.id] == new


def test_a_failed_remove_is_made_again_at_the_next_sync():
    ops = FakeOps()
    fleet = DeviceActors(2, ops)
    d1, d2 = device(1), device(2)
    run(fleet.sync(wanted(d1, d2)))
    (actor,) = ops.actors.values()
    actor.fail["remove"] = 1
    run(fleet.sync(wanted(d2)))
    assert d1.id in actor.rows  # the call failed: the loop still runs
    run(fleet.sync(wanted(d2)))
    assert list(actor.rows) == [d2.id] and actor.forgotten == [d1.id]


def test_one_dead_actor_does_not_stop_the_updates_to_the_others():
    ops = FakeOps()
    fleet = DeviceActors(1, ops)
    devices = [device(n) for n in range(1, 5)]
    run(fleet.sync(wanted(*devices)))
    ops.actors[devices[0].actor_name].fail["update"] = 5
    new = [rotated(d) for d in devices]
    run(fleet.sync(wanted(*new)))
    for d in new[1:]:
        assert ops.actors[d.actor_name].rows[d.id] == d


def test_a_lost_actor_is_recreated_from_the_rows_already_known():
    # The inventory is down (the supervisor syncs with the last rows it read); a node dies.
    ops = FakeOps()
    fleet = DeviceActors(1, ops)
    d1, d2 = device(1), device(2)
    last_read = wanted(d1, d2)
    run(fleet.sync(last_read))
    ops.actors[d1.actor_name].dead = True
    ops.alive = ["node-b"]
    run(fleet.check())
    run(fleet.sync(last_read))
    assert ops.running() == {d1.id: [d1.actor_name], d2.id: [d2.actor_name]}
    assert ops.actors[d1.actor_name].node == "node-b"


def test_an_actor_restarted_by_ray_gets_the_rows_sent_after_its_creation():
    ops = FakeOps()
    fleet = DeviceActors(2, ops)
    d1, d2 = device(1), device(2)
    run(fleet.sync(wanted(d1)))
    run(fleet.sync(wanted(d1, d2)))  # d2 packed into the same actor by an update call
    (actor,) = ops.actors.values()
    actor.restart([d1])
    run(fleet.check())
    run(fleet.sync(wanted(d1, d2)))
    assert sorted(actor.rows) == sorted([d1.id, d2.id])


def test_after_a_supervisor_restart_no_device_runs_in_two_packed_actors():
    ops = FakeOps()
    d1, d2, d3 = device(1), device(2), device(3)
    first = ops.create("devices:aaa", [d1, d2], "node-a")
    second = ops.create("devices:bbb", [d2, d3], "node-b")  # d2 was given to both
    fleet = DeviceActors(2, ops)  # the restarted supervisor
    rows = run(fleet.adopt())
    assert sorted(r["device_id"] for r in rows) == sorted([d1.id, d2.id, d3.id])
    run(fleet.check())
    run(fleet.sync(wanted(d1, d2, d3)))
    assert ops.running() == {d1.id: [first.name], d2.id: [first.name], d3.id: [second.name]}
    assert second.forgotten == []  # the state of d2 is still d2's, in the other actor


def test_an_adopted_actor_left_with_no_device_is_retired():
    ops = FakeOps()
    d1 = device(1)
    ops.create("devices:aaa", [d1], "node-a")
    extra = ops.create("devices:bbb", [d1], "node-b")
    fleet = DeviceActors(2, ops)
    run(fleet.adopt())
    run(fleet.sync(wanted(d1)))
    assert extra.dead and ops.running() == {d1.id: ["devices:aaa"]}


def test_an_actor_that_is_only_unavailable_is_kept_not_replaced():
    ops = FakeOps()
    fleet = DeviceActors(2, ops)
    d1 = device(1)
    run(fleet.sync(wanted(d1)))
    (actor,) = ops.actors.values()
    actor.fail["ping"] = 1  # restarting or busy: not gone
    run(fleet.check())
    run(fleet.sync(wanted(d1)))
    assert list(ops.actors) == [actor.name] and ops.running() == {d1.id: [actor.name]}


def test_spool_backlog_counts_each_nodes_shared_spool_once():
    ops = FakeOps()
    fleet = DeviceActors(1, ops)
    devices = [device(n) for n in range(1, 4)]
    run(fleet.sync(wanted(*devices)))
    a, b, c = (ops.actors[d.actor_name] for d in devices)
    a.node = b.node = "node-a"
    c.node = "node-b"
    a.spool, b.spool, c.spool = 3, 3, 2  # a and b see the same spool directory
    run(fleet.check())
    assert fleet.spool_pending() == 5


def test_auto_gives_each_device_an_actor_until_the_nodes_are_full_then_packs():
    from ray_backup.actors.placement import MAX_ACTORS_PER_NODE

    ops = FakeOps(nodes=("node-a",))
    fleet = DeviceActors("auto", ops)
    first = [device(i) for i in range(MAX_ACTORS_PER_NODE)]
    run(fleet.sync(wanted(*first)))
    assert sorted(ops.names()) == sorted(d.actor_name for d in first)  # one each
    grown = first + [device(i) for i in range(100, 140)]
    run(fleet.sync(wanted(*grown)))
    assert len(ops.names()) == MAX_ACTORS_PER_NODE  # packed into the same processes
    running = ops.running()
    assert sorted(running) == sorted(d.id for d in grown)
    assert all(len(actors) == 1 for actors in running.values())  # each device once


def test_auto_never_reuses_the_name_of_a_device_whose_actor_packs_others():
    from ray_backup.actors.placement import MAX_ACTORS_PER_NODE

    ops = FakeOps(nodes=("node-a",))
    fleet = DeviceActors("auto", ops)
    singles = [device(i) for i in range(MAX_ACTORS_PER_NODE)]
    run(fleet.sync(wanted(*singles)))
    more = [device(i) for i in range(100, 105)]
    run(fleet.sync(wanted(*singles, *more)))  # packed into the device-named actors
    first = singles[0]
    other = next(i for i in fleet.records[first.actor_name].device_ids if i != first.id)
    kept = next(d for d in more if d.id == other)
    run(fleet.sync(wanted(kept)))  # the first device leaves; its actor keeps the other one
    run(fleet.sync(wanted(kept, first)))  # and comes back to a fleet small enough for one each
    running = ops.running()
    assert sorted(running) == sorted([first.id, kept.id])
    assert all(len(actors) == 1 for actors in running.values())
    assert sorted(fleet.hosted()) == sorted([first.id, kept.id])
