"""N devices served by the independent SSH server (asyncssh), in one process.

    python benchmarks/benchlib/independent_fleet.py --devices 240 --inventory fleet.yaml \
        --delay 0.4 --config-bytes 45000 [--profile modern|routeros6]

Started by ``benchlib.fleets.IndependentFleet``. Every device is an
``IndependentSSHServer`` (tests/support/independent_ssh.py) on its own 127.0.0.1 port,
all on one event loop; each answers its export after ``--delay`` seconds, padded to
``--config-bytes``. Speaks the simulator's control protocol: prints ``ready <N> devices``
once all listen and the inventory is written; on stdin, ``stats`` (one JSON line) and
``quit``; it also stops on SIGTERM or when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # tests.support; ray_backup comes from the venv

import psutil  # noqa: E402
import yaml  # noqa: E402

from ray_backup.simulator.fleet import DEFAULT_PASSWORD, DEFAULT_TENANT, device_id  # noqa: E402
from tests.support.independent_ssh import MODERN, ROUTEROS6, IndependentSSHServer  # noqa: E402

PROFILES = {"modern": MODERN, "routeros6": ROUTEROS6}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--inventory", required=True, help="write the YAML inventory here")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each export")
    p.add_argument("--config-bytes", type=int, default=None, help="pad exports to this size")
    p.add_argument("--seed", type=int, default=0, help="seed of the device ids")
    p.add_argument("--profile", choices=sorted(PROFILES), default="modern")
    return p.parse_args(argv)


def inventory_rows(servers: list[IndependentSSHServer], seed: int) -> list[dict]:
    return [{"id": device_id(seed, i), "tenant_id": DEFAULT_TENANT, "hostname": f"indep-{i:04d}",
             "host": "127.0.0.1", "port": srv.port, "username": srv.username,
             "password": srv.password, "routeros_version": srv.profile.version}
            for i, srv in enumerate(servers)]


def stats(servers: list[IndependentSSHServer]) -> dict:
    commands = [c for srv in servers for c in list(srv.commands)]
    cpu = psutil.Process().cpu_times()
    return {"connections": sum(srv.connections for srv in servers), "commands": len(commands),
            "exports": sum(1 for c in commands if c.startswith("/export")),
            "peak_active_commands": None, "cpu_seconds": cpu.user + cpu.system}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True, name="asyncssh-fleet")
    runner.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    servers = [IndependentSSHServer(PROFILES[args.profile], password=DEFAULT_PASSWORD,
                                    export_delay=args.delay, export_bytes=args.config_bytes,
                                    loop=loop)
               for _ in range(args.devices)]
    try:
        for srv in servers:
            srv.start()
        rows = inventory_rows(servers, args.seed)
        Path(args.inventory).write_text(yaml.safe_dump({"devices": rows}, sort_keys=False))
        print(f"ready {len(servers)} devices", flush=True)
        for line in sys.stdin:
            verb = line.strip()
            if verb == "quit":
                break
            print(json.dumps(stats(servers)) if verb == "stats" else f"error unknown command {verb!r}",
                  flush=True)
    except (ValueError, OSError):  # stdin closed by SIGTERM
        pass
    finally:
        for srv in servers:
            srv.stop()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
