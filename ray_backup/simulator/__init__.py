"""A RouterOS SSH simulator for tests, the demo and benchmarks.

    from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml

    devices = make_fleet(100, faults={"stall": 2, "wrong_password": 1})
    with Simulator(devices) as sim:           # every device on its own 127.0.0.1 port
        write_inventory_yaml("fleet.yaml", devices)
        ...

``python -m ray_backup.simulator --help`` runs a fleet in its own process.
"""

from ray_backup.simulator.captures import available_captures, load_capture
from ray_backup.simulator.device import FAULTS, SimDevice, secret_marker
from ray_backup.simulator.fleet import make_fleet, write_inventory_yaml
from ray_backup.simulator.server import SimStats, Simulator

__all__ = [
    "FAULTS",
    "SimDevice",
    "SimStats",
    "Simulator",
    "available_captures",
    "load_capture",
    "make_fleet",
    "secret_marker",
    "write_inventory_yaml",
]
