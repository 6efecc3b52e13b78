from collections import Counter

from ray_backup.actors.placement import (
    MAX_ACTORS_PER_NODE,
    auto_layout,
    fit_warning,
    least_loaded,
    moves_to_balance,
)

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


def test_auto_runs_one_actor_per_device_while_the_fleet_fits_the_nodes():
    per_node = MAX_ACTORS_PER_NODE
    assert auto_layout(1, 1).per_actor == 1
    assert auto_layout(per_node, 1).per_actor == 1
    assert auto_layout(3 * per_node, 3).per_actor == 1
    assert not auto_layout(3 * per_node, 3).packed


def test_auto_packs_beyond_into_a_bounded_number_of_processes_per_node():
    per_node = MAX_ACTORS_PER_NODE
    for devices, nodes in [(per_node + 1, 1), (5000, 1), (1000, 3), (10_000, 7)]:
        layout = auto_layout(devices, nodes)
        assert layout.packed
        actors = -(-devices // layout.per_actor)
        assert actors <= per_node * nodes  # processes, hence connections, do not grow
        assert layout.per_actor * per_node * nodes >= devices


def test_auto_says_the_mode_and_its_numbers():
    text = auto_layout(5000, 2).describe()
    assert "RAY_BACKUP_DEVICES_PER_ACTOR=auto" in text and "5000 devices on 2 node(s)" in text
    assert "packed, up to 1250 devices per actor process" in text
    assert f"{MAX_ACTORS_PER_NODE} actor processes per node" in text
    assert "one actor process per device" in auto_layout(2, 2).describe()


def test_devices_per_actor_defaults_to_auto_and_takes_a_count():
    from ray_backup.settings import Settings

    assert Settings.load(environ={}).devices_per_actor == "auto"
    assert Settings.load(environ={"RAY_BACKUP_DEVICES_PER_ACTOR": "AUTO"}).devices_per_actor == "auto"
    assert Settings.load(environ={"RAY_BACKUP_DEVICES_PER_ACTOR": "1"}).devices_per_actor == 1
    assert Settings.load(environ={"RAY_BACKUP_DEVICES_PER_ACTOR": "50"}).devices_per_actor == 50
