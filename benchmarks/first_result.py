"""How long a connected driver waits for its first result: ``backup_fleet()`` called in a
process already connected to a running Ray, timed from the call to the first ``on_result``.

    python benchmarks/first_result.py --devices 240 --concurrency 10 --delay 0.4 --sweeps 4

Issue 11's goal: within 1 s (notebooks: ``rb.backup``). The first sweep against a fresh
head includes creating the node's fleet worker; the later ones reuse it (each with a new
output directory, as separate `ray-backup backup` runs would). Fleet: the independent
SSH servers (``--fleet simulator`` for ours), host keys known.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=240)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--delay", type=float, default=0.4)
    p.add_argument("--config-bytes", type=int, default=45_000)
    p.add_argument("--fleet", choices=bl.FLEETS, default="independent")
    p.add_argument("--sweeps", type=int, default=4, help="sweeps in a row (default 4)")
    p.add_argument("--output", help="results file (default benchmarks/results/first_result.json)")
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


def sweeps(args: argparse.Namespace, inventory: Path, address: str) -> list[dict]:
    import ray

    from ray_backup import job, oneshot
    from ray_backup.inventory.base import open_inventory
    from ray_backup.settings import Settings

    os.environ.update({"RAY_ADDRESS": address, "RAY_BACKUP_INVENTORY": str(inventory),
                       "CONFIG_BACKUP_MAX_CONCURRENT": str(args.concurrency),
                       "CONFIG_BACKUP_COMMAND_TIMEOUT": "60"})
    devices = open_inventory(Settings.load()).load().devices
    job.connect()
    runs = []
    try:
        for i in range(args.sweeps):
            os.environ["RAY_BACKUP_OUTPUT_DIR"] = bl.scratch("rb-bench-out-")
            settings, firsts = Settings.load(), []
            started = time.perf_counter()

            def first(_result: dict, firsts=firsts, started=started) -> None:
                if not firsts:
                    firsts.append(time.perf_counter() - started)

            results = oneshot.backup_fleet(settings, devices, job.actor_env(), on_result=first)
            runs.append({"sweep": i, "first_result_s": round(firsts[0], 3),
                         "all_s": round(time.perf_counter() - started, 3),
                         "ok": sum(r["status"] == "success" for r in results),
                         "load_avg_1m": round(os.getloadavg()[0], 2)})
            print(f"sweep {i}: first result after {runs[-1]['first_result_s']:.2f} s, "
                  f"{runs[-1]['ok']}/{len(devices)} in {runs[-1]['all_s']:.2f} s", flush=True)
    finally:
        ray.shutdown()
    return runs


def table(doc: dict) -> str:
    p = doc["parameters"]
    head = (f"N={p['devices']} ({p['fleet']} fleet), K={p['concurrency']}, {p['config_bytes']:,} B "
            f"exports after {p['delay_s']} s; backup_fleet() on a connected driver")
    rows = [[r["sweep"], r["first_result_s"], r["all_s"], r["ok"], r["load_avg_1m"]]
            for r in doc["runs"]]
    return head + "\n\n" + bl.markdown_table(
        ["sweep", "first result s", "all s", "backed up", "load"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.provenance.require_clean(args.allow_dirty)
    workdir = bl.scratch("rb-bench-fr-")
    auth = bl.token_auth_env(workdir)
    os.environ.update(auth)
    for name in bl.SERVICE_ENV:
        os.environ.pop(name, None)
    with bl.open_fleet(args.fleet, args.devices, workdir, delay=args.delay,
                       config_bytes=args.config_bytes) as fleet:
        bl.write_fingerprints(fleet.inventory, fleet.rows)
        with bl.ray_head(bl.clean_env(**auth), num_cpus=2) as head:
            runs = sweeps(args, fleet.inventory, head.gcs)
    doc = {"runs": runs, "parameters": {
        "devices": args.devices, "concurrency": args.concurrency, "delay_s": args.delay,
        "config_bytes": args.config_bytes, "fleet": args.fleet, "sweeps": args.sweeps}}
    bl.publish("first_result", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
