"""Where device actors go: even per-node counts, and what to move to keep them even."""

from __future__ import annotations

from collections import Counter

# A device actor's worker process with ray, paramiko and the clients imported
# (measured about 110 MB resident on Python 3.11, Ray 2.60).
ACTOR_PROCESS_BYTES = 120 * 1024 * 1024


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
