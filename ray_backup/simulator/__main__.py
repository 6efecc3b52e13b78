"""Run a simulated fleet in its own process (so its CPU is measured apart).

    python -m ray_backup.simulator --devices 1000 --inventory fleet.yaml \\
        [--base-port 2200] [--seed 0] [--delay 0.1 [--delay-applies-to export]] \\
        [--config-bytes 50000] \\
        [--fault stall=2 --fault wrong_password=1 ...]

Prints ``ready <N> devices`` on stdout once every device listens, then runs until
SIGTERM/SIGINT or ``quit``. Control lines on stdin, one answer line each:
``mutate <device_id|all>``, ``rotate <device_id|all>`` (new host key),
``stats`` (a JSON line: counters and ``cpu_seconds``), ``quit``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import threading

from ray_backup.simulator.device import DELAY_SCOPES
from ray_backup.simulator.fleet import (
    DEFAULT_PASSWORD,
    DEFAULT_VERSIONS,
    make_fleet,
    write_inventory_yaml,
)
from ray_backup.simulator.server import PARAMIKO_LOGGER, Simulator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ray_backup.simulator", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--devices", type=int, required=True, help="number of devices")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument(
        "--base-port", type=int, default=0, help="first port (default: OS-chosen ports)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for ids and fault placement")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--delay-applies-to",
        choices=DELAY_SCOPES,
        default="all",
        help="delay every command line, also each line typed into the shell (all, the "
        "default), or exports only, as a real device (export)",
    )
    parser.add_argument(
        "--config-bytes", type=int, default=None, help="pad exports to about this size"
    )
    parser.add_argument(
        "--versions", default=",".join(DEFAULT_VERSIONS), help="comma-separated, used in turn"
    )
    parser.add_argument("--password", default=DEFAULT_PASSWORD)
    parser.add_argument("--fault", action="append", default=[], metavar="KIND=COUNT")
    parser.add_argument("--inventory", help="write the YAML inventory here")
    parser.add_argument(
        "--verbose", action="store_true", help="log paramiko's handshake errors too"
    )
    args = parser.parse_args(argv)
    try:
        args.faults = {k: int(v) for k, _, v in (f.partition("=") for f in args.fault)}
    except ValueError:
        parser.error("--fault takes KIND=COUNT, e.g. --fault stall=2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr)
    if not args.verbose:
        logging.getLogger(PARAMIKO_LOGGER).setLevel(logging.CRITICAL)
    devices = make_fleet(
        args.devices,
        seed=args.seed,
        versions=tuple(v for v in args.versions.split(",") if v),
        faults=args.faults,
        config_bytes=args.config_bytes,
        delay=args.delay,
        delay_applies_to=args.delay_applies_to,
        password=args.password,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    sim = Simulator(devices, host=args.host, base_port=args.base_port)
    try:
        sim.start()
    except (OSError, ValueError) as exc:
        print(f"simulator: {exc}", file=sys.stderr)
        return 1
    try:
        if args.inventory:
            write_inventory_yaml(args.inventory, devices)
        print(f"ready {len(devices)} devices", flush=True)
        _control_loop(sim, stop)
    finally:
        sim.stop()
    return 0


def _control_loop(sim: Simulator, stop: threading.Event) -> None:
    fd: int | None = sys.stdin.fileno() if sys.stdin else None
    pending = b""
    while not stop.is_set():
        if fd is None:  # stdin closed: only a signal stops us
            stop.wait(0.5)
            continue
        try:
            ready, _, _ = select.select([fd], [], [], 0.5)
        except InterruptedError:
            continue
        if not ready:
            continue
        data = os.read(fd, 4096)
        if not data:
            fd = None
            continue
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            answer = control(sim, line.decode(errors="replace").strip())
            if answer is None:
                return
            print(answer, flush=True)


def control(sim: Simulator, line: str) -> str | None:
    """Answer one control line; None means quit."""
    words = line.split()
    if not words:
        return ""
    verb, target = words[0], (words[1] if len(words) > 1 else "")
    if verb == "quit":
        return None
    if verb == "stats":
        return json.dumps({**sim.stats.as_dict(), "cpu_seconds": sim.cpu_seconds()})
    if verb in ("mutate", "rotate") and target:
        try:
            devices = sim.devices if target == "all" else [sim.device(target)]
        except KeyError:
            return f"error unknown device {target}"
        for device in devices:
            device.mutate() if verb == "mutate" else device.rotate_host_key()
        return f"ok {verb} {len(devices)}"
    return f"error unknown command {line!r}"


if __name__ == "__main__":
    sys.exit(main())
