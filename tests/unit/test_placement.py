from collections import Counter

from ray_backup.actors.placement import fit_warning, least_loaded, moves_to_balance

NODES = ["a", "b", "c"]


def test_least_loaded_prefers_fewest_then_order():
    assert least_loaded(NODES, Counter({"a": 2, "b": 1, "c": 1})) == "b"


def test_moves_bring_counts_within_one():
    hosts = {f"device:{i}": ("a", 1) for i in range(7)} | {"device:x": ("b", 1)}
    moves = moves_to_balance(NODES, hosts)
    load = Counter(node for node, _ in hosts.values())
    for _, target in moves:
        load["a"] -= 1
        load[target] += 1
    assert max(load.values()) - min(load[n] for n in NODES) <= 1
    assert len(moves) == 4


def test_balanced_fleet_needs_no_moves_and_one_node_never_moves():
    assert moves_to_balance(NODES, {"d1": ("a", 1), "d2": ("b", 1), "d3": ("c", 1)}) == []
    assert moves_to_balance(["a"], {"d1": ("a", 1), "d2": ("a", 1)}) == []


def test_fleet_that_does_not_fit_is_told_how_to_pack():
    gb = 1024**3
    assert fit_warning(100, 1, 16 * gb) is None  # 100 processes of ~120 MB fit in 16 GB
    warning = fit_warning(5000, 1, 16 * gb)
    assert "5000 devices in 5000 actor processes" in warning
    per_actor = int(warning.rsplit(" ", 1)[1])
    assert fit_warning(5000, per_actor, 16 * gb) is None
