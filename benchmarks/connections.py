"""The long-running job while its devices back up: connections each server sees, memory
per device, and the time until every device runs (issue 11, items 3 and 4).

    python benchmarks/connections.py --devices 1000 --seconds 60
    python benchmarks/connections.py --devices 5000 --seconds 60

One configuration per fleet size, each in a fresh child process: a simulated fleet of N
devices (``python -m ray_backup.simulator``, real SSH), a PostgreSQL inventory of them in
a fresh database of a private PostgreSQL (host keys trusted on first use are written
there), Redis at ``--redis-url`` (own key prefix), a private tansu Kafka broker, a private
local Ray (num_cpus 2), and the job (``ray_backup.job.start``) with
``RAY_BACKUP_DEVICES_PER_ACTOR`` = ``--devices-per-actor`` (default ``auto``). Backups
start at once (jitter 0–``--jitter`` s) and run ``CONFIG_BACKUP_MAX_CONCURRENT`` at a
time. Every 2 s for ``--seconds`` once every device runs, it samples:

- PostgreSQL: ``pg_stat_activity`` rows for the test database (the job's only);
- Redis: ``CLIENT LIST`` entries whose address is a local port held by a process of
  this run's Ray (the Redis server is shared with other users);
- Kafka: TCP connections from this run's Ray processes to the broker's port (tansu
  exposes no connection count);
- USS and RSS of the job's processes (device actors, supervisor, semaphore, history
  writers), summed, ÷ N.

It reports the maximum of each connection count (one node: the per-node figure), the
median memory, the time until every device had a loop (``all_running_s``) and how many
backups succeeded meanwhile.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
import uuid
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

GOAL_CONNECTIONS_PER_NODE = 8
GOAL_BYTES_PER_DEVICE = 256 * 1024
GOAL_START_S = 60.0
JOB_ACTORS = ("ray::DeviceBackupActor", "ray::BackupSupervisor", "ray::SSHSemaphore",
              "ray::HistoryWriter")
DB_NAME = "rb_bench_connections"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--devices", type=bl.int_list, default=[1000], help="fleet sizes (default 1000)")
    p.add_argument("--devices-per-actor", default="auto", help="auto (default), 1 or a count")
    p.add_argument("--seconds", type=float, default=60.0, help="sampling window once all run")
    p.add_argument("--concurrency", type=int, default=10, help="CONFIG_BACKUP_MAX_CONCURRENT")
    p.add_argument("--jitter", type=float, default=30.0, help="first backups within this many s")
    p.add_argument("--delay", type=float, default=0.2, help="simulator delay before an export")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    p.add_argument("--output", help="results file (default benchmarks/results/connections.json)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one configuration


def job_pids() -> set[int]:
    return {p.pid for procs in bl.ray_processes().values() for p in procs}


def by_process(port: int) -> dict[str, int]:
    """Connections to ``port`` by Ray process label (which process holds how many)."""
    return {label: n for label, procs in bl.ray_processes().items()
            if (n := len(local_ports({p.pid for p in procs}, port)))}


def local_ports(pids: set[int], remote_port: int) -> set[int]:
    """Local ports of the TCP connections from ``pids`` to ``remote_port`` on this host."""
    ports = set()
    for pid in pids:
        try:
            for c in psutil.Process(pid).net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == remote_port and c.status == psutil.CONN_ESTABLISHED:
                    ports.add(c.laddr.port)
        except psutil.Error:
            continue
    return ports


def sample(admin, redis_client, redis_port: int, kafka_port: int) -> dict:
    pids = job_pids()
    ours = local_ports(pids, redis_port)
    clients = redis_client.client_list()
    redis_seen = sum(1 for c in clients if int(c["addr"].rsplit(":", 1)[1]) in ours)
    pg = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s",
                       (DB_NAME,)).fetchone()[0]
    memory = {label: bl.memory_of(procs) for label, procs in bl.ray_processes().items()}
    job = [v for k, v in memory.items() if k in JOB_ACTORS]
    by_label = {k: {"processes": v["processes"], "uss_mib": round(v["uss_bytes"] / 2**20, 1),
                    "rss_mib": round(v["rss_bytes"] / 2**20, 1)} for k, v in memory.items()}
    return {"postgres": pg, "redis": redis_seen, "kafka": len(local_ports(pids, kafka_port)),
            "uss_bytes": sum(v["uss_bytes"] for v in job), "rss_bytes": sum(v["rss_bytes"] for v in job),
            "processes": sum(v["processes"] for v in job), "memory_by_process": by_label,
            "kafka_by_process": by_process(kafka_port), "redis_by_process": by_process(redis_port)}


def fill(url: str, rows: list[dict], key: str) -> None:
    from ray_backup.inventory.schema import NewDevice, add_devices, init_db

    init_db(url)
    add_devices(url, [NewDevice(id=r["id"], host=r["host"], port=r["port"], username=r["username"],
                                password=r["password"], hostname=r["hostname"],
                                routeros_version=r.get("routeros_version"))
                      for r in rows], key)


def measure(n: int, args: argparse.Namespace) -> dict:
    import psycopg
    import ray
    import redis

    from ray_backup import constants as C
    from ray_backup import job
    from ray_backup.settings import Settings
    from tests.support import services as svc

    workdir = Path(bl.scratch("rb-bench-conn-"))
    key = base64.b64encode(os.urandom(32)).decode()
    prefix = f"rb_bench_{uuid.uuid4().hex[:8]}:"
    with (svc.PostgresServer() as pg, svc.KafkaBroker() as kafka,
          bl.SimFleet(n, workdir, delay=args.delay, delay_applies_to="export") as fleet,
          psycopg.connect(pg.url, autocommit=True) as admin):
        admin.execute(f"CREATE DATABASE {DB_NAME}")
        url = pg.url_for(DB_NAME)
        fill(url, fleet.rows, key)
        os.environ.update({
            "DATABASE_URL": url, "CREDENTIAL_ENCRYPTION_KEY": key, "REDIS_URL": args.redis_url,
            "RAY_BACKUP_REDIS_PREFIX": prefix, "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "RAY_BACKUP_DEVICES_PER_ACTOR": str(args.devices_per_actor),
            "RAY_BACKUP_SPOOL_DIR": str(workdir / "spool"), "RAY_BACKUP_METRICS_PORT": "0",
            "CONFIG_BACKUP_INTERVAL": "3600", "CONFIG_BACKUP_JITTER_MIN": "0",
            "CONFIG_BACKUP_JITTER_MAX": str(args.jitter), "DEVICE_REFRESH_SECONDS": "30",
            "CONFIG_BACKUP_MAX_CONCURRENT": str(args.concurrency)})
        os.environ.pop("RAY_BACKUP_INVENTORY", None)
        kafka.create_topic(Settings.load().kafka_topic)
        settings, env = Settings.load(), job.actor_env()
        r = redis.Redis.from_url(args.redis_url, decode_responses=True)
        redis_port = r.connection_pool.connection_kwargs.get("port", 6379)
        kafka_port = int(kafka.bootstrap.rsplit(":", 1)[1])
        try:
            with bl.local_ray(num_cpus=args.ray_cpus):
                started = time.perf_counter()
                job.start(settings, env)
                all_running = None
                while time.perf_counter() - started < args.timeout:
                    hosted = bl.hosted_loops()
                    if sum(len(i["device_ids"]) for i in hosted.values()) >= n:
                        all_running = time.perf_counter() - started
                        break
                    time.sleep(0.5)
                actors = len(bl.hosted_loops())
                samples, until = [], time.perf_counter() + args.seconds
                while time.perf_counter() < until:
                    samples.append(sample(admin, r, redis_port, kafka_port))
                    time.sleep(2)
                supervisor = ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
                rows = ray.get(supervisor.status.remote(), timeout=60)
                job.stop_all(grace_s=5)
        finally:
            svc.delete_prefix(args.redis_url, prefix)
    return {
        "devices": n, "devices_per_actor": args.devices_per_actor, "device_actors": actors,
        "all_running_s": round(all_running, 2) if all_running else None,
        "backed_up": sum(1 for row in rows if row.get("status") == "success"),
        "max_connections": {s: max(x[s] for x in samples) for s in ("postgres", "redis", "kafka")},
        "uss_bytes_per_device": round(bl.median(x["uss_bytes"] for x in samples) / n),
        "rss_bytes_per_device": round(bl.median(x["rss_bytes"] for x in samples) / n),
        "job_processes": samples[-1]["processes"], "samples": samples,
        "load_average_1m": os.getloadavg()[0],
    }


# --------------------------------------------------------------------------- the sweep


def table(doc: dict) -> str:
    rows = [[r["devices"], r["devices_per_actor"], r["device_actors"], r["all_running_s"],
             r["backed_up"], r["max_connections"]["postgres"], r["max_connections"]["redis"],
             r["max_connections"]["kafka"], round(r["uss_bytes_per_device"] / 1024, 1),
             round(r["rss_bytes_per_device"] / 1024, 1), r.get("load_at_start")]
            for r in doc["runs"]]
    return bl.markdown_table(
        ["N", "devices/actor", "actor processes", "all loops running (s)", "backed up in window",
         "PostgreSQL conns (max)", "Redis conns (max)", "Kafka conns (max)", "USS KiB/device",
         "RSS KiB/device", "load 1 min at start"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        bl.child_answer(measure(args.child, args))
        return 0
    bl.provenance.require_clean(args.allow_dirty)
    runs = []
    for n in args.devices:
        load = os.getloadavg()[0]
        argv = [str(Path(__file__).resolve()), "--child", str(n), "--allow-dirty",
                "--devices-per-actor", str(args.devices_per_actor), "--seconds", str(args.seconds),
                "--concurrency", str(args.concurrency), "--jitter", str(args.jitter),
                "--delay", str(args.delay), "--redis-url", args.redis_url,
                "--ray-cpus", str(args.ray_cpus), "--timeout", str(args.timeout)]
        result = bl.run_child(argv, args.timeout + args.seconds + 600, env=bl.clean_env())
        result["load_at_start"] = load
        runs.append(result)
        print(f"N={n}: running in {result['all_running_s']} s, connections "
              f"{result['max_connections']}, USS {result['uss_bytes_per_device'] / 1024:.0f} KiB/device",
              flush=True)
    doc = {"runs": runs, "parameters": vars(args) | {"goal_connections_per_node": GOAL_CONNECTIONS_PER_NODE,
                                                      "goal_bytes_per_device": GOAL_BYTES_PER_DEVICE}}
    bl.publish("connections", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
