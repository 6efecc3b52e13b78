"""Where device actors go: even per-node counts, and what to move to keep them even;
and how many devices share an actor process (``RAY_BACKUP_DEVICES_PER_ACTOR``)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

# A device actor's worker process with ray, paramiko and the clients imported
# (measured about 110 MB resident on Python 3.11, Ray 2.60).
ACTOR_PROCESS_BYTES = 120 * 1024 * 1024
# Measured (benchmarks/README.md, section 3b): a device actor process holds about
# 70 MiB alone (USS, 119 MiB RSS) and takes 1.5-2.3 s to start on this loaded 2-core node.
ACTOR_USS_BYTES = 70 * 1024 * 1024
ACTOR_START_S = 2.0
# Connections from one node to each server stay <= CONNECTIONS_PER_NODE (issue 11). A
# device actor process holds at most 3 Redis connections (a capped pool), 1 to Kafka (its
# producer) and 1 to PostgreSQL at a time (host keys), whatever the number of devices it
# runs. What else may sit on a node, measured (benchmarks/connections.py): the semaphore
# (1 Redis), the supervisor (1 PostgreSQL) and two history writers (3 Kafka, 1
# PostgreSQL each). Kafka binds: 2 device actors + 6 = 8.
MAX_ACTORS_PER_NODE = 2
CONNECTIONS_PER_NODE = 8


@dataclass(frozen=True)
class Layout:
    """``auto``'s choice for a fleet: devices per actor process, and why."""

    devices: int
    nodes: int
    actors_per_node: int
    per_actor: int

    @property
    def packed(self) -> bool:
        return self.per_actor > 1

    def describe(self) -> str:
        mode = (f"packed, up to {self.per_actor} devices per actor process"
                if self.packed else "one actor process per device")
        return (f"RAY_BACKUP_DEVICES_PER_ACTOR=auto: {self.devices} devices on {self.nodes} "
                f"node(s): {mode} (one each up to {self.actors_per_node} actor processes per "
                f"node: <= {CONNECTIONS_PER_NODE} connections per node to each server, "
                f"~{ACTOR_USS_BYTES // 2**20} MiB and ~{ACTOR_START_S} s per process)")


def auto_layout(devices: int, nodes: int) -> Layout:
    """One actor process per device while the fleet fits in ``MAX_ACTORS_PER_NODE`` per
    node, packed evenly into that many processes per node beyond.

    The connection budget binds first: 2 processes are ~140 MiB of a node's memory and
    start in a few seconds, so neither memory nor start time lowers the count further.
    """
    nodes = max(1, nodes)
    per_node = MAX_ACTORS_PER_NODE
    slots = per_node * nodes
    per_actor = 1 if devices <= slots else math.ceil(devices / slots)
    return Layout(devices, nodes, per_node, per_actor)


def least_loaded(node_ids: list[str], load: Counter) -> str:
    """The node with the fewest devices (ties: the first in ``node_ids``)."""
    return min(node_ids, key=lambda node: (load.get(node, 0), node_ids.index(node)))


def moves_to_balance(
    node_ids: list[str], hosts: dict[str, tuple[str | None, int]]
) -> list[tuple[str, str]]:
    """(host name, target node) moves that bring per-node device counts within one.

    ``hosts`` maps a host actor's name to (its node, how many devices it hosts).
    Only hosts of one device are moved, so a move always narrows the gap.
    """
    if len(node_ids) < 2:
        return []
    load = Counter({node: 0 for node in node_ids})
    movable: dict[str, list[str]] = {node: [] for node in node_ids}
    for name, (node, count) in sorted(hosts.items()):
        if node in load:
            load[node] += count
            if count == 1:
                movable[node].append(name)
    moves = []
    while True:
        high = max(node_ids, key=lambda n: (load[n], -node_ids.index(n)))
        low = least_loaded(node_ids, load)
        if load[high] - load[low] <= 1 or not movable[high]:
            return moves
        name = movable[high].pop()
        moves.append((name, low))
        load[high] -= 1
        load[low] += 1


def fit_warning(devices: int, per_actor: int, cluster_memory: float) -> str | None:
    """What to tell the operator when the fleet's actor processes need more memory
    than the cluster has (Ray's ``memory`` resource), or None when it fits."""
    actors = -(-devices // per_actor)
    need = actors * ACTOR_PROCESS_BYTES
    if not cluster_memory or need <= cluster_memory:
        return None
    fits = max(1, int(cluster_memory // ACTOR_PROCESS_BYTES))
    return (
        f"{devices} devices in {actors} actor processes need about {need / 1e9:.1f} GB, "
        f"the cluster has {cluster_memory / 1e9:.1f} GB: set RAY_BACKUP_DEVICES_PER_ACTOR "
        f"to at least {-(-devices // fits)}"
    )
