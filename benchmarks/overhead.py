"""Overhead per backup: the CPU and wall time ray-backup adds on top of the bare-SSH floor.

    python benchmarks/overhead.py --devices 200 --concurrency 1,10

Three variants back up the same simulated fleet (its own process), each in a fresh
child process, in turns:

- ``floor``: paramiko connect + exec of the export + read, K threads (as in fleet_sweep);
- ``pipeline``: ray-backup's backup path without Ray: ``guarded_backup`` in one asyncio
  process with a local semaphore of K, the Redis lock, validate, normalize, hash and the
  Kafka publish (acknowledged by the broker);
- ``ray-backup``: the one-shot fleet backup through the actors and the SSH semaphore
  actor, with the same Redis and Kafka.

Redis is ``--redis-url`` (default $REDIS_URL, else redis://127.0.0.1:6379/0, else a private
redis-server); Kafka is a private tansu broker (``tests.support.services.KafkaBroker``)
unless ``--kafka-bootstrap`` names one. Their CPU is reported apart, never as the tool's.

The added cost is read two ways: ``steady`` (between the 10th and 90th percent of
results: the marginal cost of one more backup once the actors run) and ``end to end``
(the whole run, with actor start-up, divided by N). At K=1 the wall time per backup is
the latency a backup gains.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl
import fleet_sweep

VARIANTS = ("floor", "pipeline", "ray-backup")
GOAL_CPU_MS = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--devices", type=int, default=200, help="fleet size (default 200)")
    p.add_argument("--concurrency", type=bl.int_list, default=[1, 10], help="K values (default 1,10)")
    p.add_argument("--delay", type=float, default=0.0, help="device response delay, s (default 0)")
    p.add_argument("--config-bytes", type=int, default=30_000, help="export size (default 30000)")
    p.add_argument("--repeats", type=int, default=3, help="runs per variant and K; medians")
    p.add_argument("--variants", default=",".join(VARIANTS), help="subset of " + ", ".join(VARIANTS))
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument("--kafka-bootstrap", default=None,
                   help="an existing broker (default: start a private tansu broker)")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1200, help="seconds per variant run")
    p.add_argument("--output", help="results file (default benchmarks/results/overhead.json)")
    p.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--inventory", help=argparse.SUPPRESS)
    p.add_argument("--sim-pid", type=int, help=argparse.SUPPRESS)
    bl.provenance.add_argument(p)
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    if set(args.variants) - set(VARIANTS):
        p.error(f"unknown variants {sorted(set(args.variants) - set(VARIANTS))}")
    return args


# --------------------------------------------------------------------------- the pipeline without Ray


def run_pipeline(inventory: str, k: int, sim_pid: int) -> dict:
    import asyncio

    from ray_backup import constants as C
    from ray_backup import loop as rb_loop
    from ray_backup.actors.permits import LocalPermits
    from ray_backup.inventory.yamlfile import YamlInventory
    from ray_backup.runtime import Runtime
    from ray_backup.settings import Settings

    in_thread = getattr(rb_loop, "in_thread", asyncio.to_thread)
    os.environ.update({"RAY_BACKUP_INVENTORY": inventory,
                       "RAY_BACKUP_OUTPUT_DIR": bl.scratch("rb-bench-out-"),
                       "CONFIG_BACKUP_MAX_CONCURRENT": str(k)})
    settings = Settings.load()
    runtime = Runtime(settings)
    devices = YamlInventory(inventory).load().devices

    window = bl.Window(sim_pid)
    progress = bl.Progress(window, len(devices))

    async def main() -> list[str]:
        deps = rb_loop.LoopDeps(collector=runtime.collector, coordinator=runtime.coordinator,
                                permits=LocalPermits(k), schedule=runtime.schedule())

        async def one(device) -> str:
            # What FleetWorker.backup does, minus the actor around it.
            if not await in_thread(deps.coordinator.is_online, device.id):
                status = C.STATUS_SKIPPED_OFFLINE
            else:
                status = (await rb_loop.guarded_backup(device, deps))[0].status
            progress.done()
            return status

        return await asyncio.gather(*(one(d) for d in devices))

    window.start()
    statuses = asyncio.run(main())
    measured = window.stop()
    runtime.close()
    return {**measured, **progress.summary(), "ok": statuses.count(C.STATUS_SUCCESS),
            "statuses": {s: statuses.count(s) for s in set(statuses)}}


def child_main(args: argparse.Namespace) -> None:
    import yaml

    rows = yaml.safe_load(Path(args.inventory).read_text())["devices"]
    k = args.concurrency[0]
    if args.child == "floor":
        result = fleet_sweep.run_floor(rows, k, args.sim_pid)
    elif args.child == "pipeline":
        result = run_pipeline(args.inventory, k, args.sim_pid)
    else:
        result = fleet_sweep.run_ray_backup(args.inventory, k, args.sim_pid, args.ray_cpus, 0)
    bl.child_answer({"n": len(rows), **result})


# --------------------------------------------------------------------------- the comparison


@contextlib.contextmanager
def kafka(bootstrap: str | None):
    from tests.support import services as svc

    if bootstrap:
        yield bootstrap, None
        return
    with svc.KafkaBroker() as broker:
        yield broker.bootstrap, broker.pid


@contextlib.contextmanager
def redis_server(url: str):
    from tests.support import services as svc

    if svc.reachable_redis(url):
        port = int(url.rsplit(":", 1)[1].split("/")[0]) if url.count(":") >= 2 else 6379
        yield url, bl.listening_pid(port)
        return
    with svc.RedisServer() as server:
        yield server.url, server.pid


def compare(args: argparse.Namespace) -> dict:
    from tests.support import services as svc

    runs = []
    prefix = f"rb_bench_{uuid.uuid4().hex[:8]}:"
    with tempfile.TemporaryDirectory(prefix="rb-bench-overhead-") as workdir, \
            redis_server(args.redis_url) as (redis_url, redis_pid), \
            kafka(args.kafka_bootstrap) as (bootstrap, kafka_pid), \
            bl.SimFleet(args.devices, workdir, delay=args.delay, config_bytes=args.config_bytes,
                        delay_applies_to="export") as sim:
        bl.write_fingerprints(sim.inventory, sim.rows)
        topic = svc.create_topic(bootstrap, f"rb_bench_{uuid.uuid4().hex[:8]}")
        watch = ",".join(f"{name}={pid}" for name, pid in (("kafka", kafka_pid), ("redis", redis_pid)) if pid)
        env = bl.clean_env(REDIS_URL=redis_url, RAY_BACKUP_REDIS_PREFIX=prefix,
                           KAFKA_BOOTSTRAP_SERVERS=bootstrap, KAFKA_TOPIC=topic,
                           RAY_BACKUP_SPOOL_DIR=str(Path(workdir) / "spool"),
                           **{bl.WATCH_ENV: watch})
        try:
            for k in args.concurrency:
                for repeat in range(args.repeats):
                    shift = repeat % len(args.variants)
                    for variant in args.variants[shift:] + args.variants[:shift]:
                        argv = [str(Path(__file__).resolve()), "--child", variant,
                                "--inventory", str(sim.inventory), "--sim-pid", str(sim.pid),
                                "--concurrency", str(k), "--ray-cpus", str(args.ray_cpus)]
                        result = bl.run_child(argv, args.timeout, env=env)
                        run = {"variant": variant, "concurrency": k, "repeat": repeat, **result}
                        runs.append(run)
                        steady = result.get("steady") or {}
                        print(f"K={k} #{repeat} {variant:10s} ok {result['ok']}/{result['n']} "
                              f"wall {result['wall_s']:.2f} s  "
                              f"cpu {1000 * result['cpu_s'] / result['n']:.2f} "
                              f"ms/backup  steady {steady.get('cpu_ms_per_item')} ms/backup", flush=True)
        finally:
            svc.delete_topic(bootstrap, topic)
            svc.delete_prefix(redis_url, prefix)
    return {"runs": runs, "summary": summarize(runs, args),
            "services": {"redis": "external" if redis_pid and args.redis_url == redis_url else "private",
                         "kafka": "external" if args.kafka_bootstrap else "private tansu"}}


def summarize(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    out = []
    for k in args.concurrency:
        per = {}
        for variant in args.variants:
            mine = [r for r in runs if r["concurrency"] == k and r["variant"] == variant]
            if not mine:
                continue
            n = mine[0]["n"]
            per[variant] = {
                "all_ok": all(r["ok"] == r["n"] for r in mine),
                "wall_ms_per_backup": bl.median(1000 * r["wall_s"] / n for r in mine),
                "cpu_ms_per_backup": bl.median(1000 * r["cpu_s"] / n for r in mine),
                "steady_cpu_ms_per_backup": bl.median(
                    (r.get("steady") or {}).get("cpu_ms_per_item") for r in mine),
                "steady_wall_ms_per_backup": bl.median(
                    1000 / r["steady"]["per_s"] for r in mine if r.get("steady")),
                "kafka_cpu_ms_per_backup": bl.median(
                    1000 * r["services_cpu_s"].get("kafka", 0) / n for r in mine),
                "redis_cpu_ms_per_backup": bl.median(
                    1000 * r["services_cpu_s"].get("redis", 0) / n for r in mine),
                "sim_cpu_ms_per_backup": bl.median(1000 * r["sim_cpu_s"] / n for r in mine),
                "idle_cpu_per_s": bl.median(r.get("idle_cpu_per_s") for r in mine),
                "cpu_ms_per_backup_net_of_idle": bl.median(fleet_sweep.net_of_idle(r) for r in mine),
            }
        row = {"concurrency": k, "devices": args.devices, "variants": per}
        if "floor" in per and "ray-backup" in per:
            f, rb = per["floor"], per["ray-backup"]
            row["added"] = {
                "steady_cpu_ms": _minus(rb["steady_cpu_ms_per_backup"], f["steady_cpu_ms_per_backup"]),
                "end_to_end_cpu_ms": _minus(rb["cpu_ms_per_backup"], f["cpu_ms_per_backup"]),
                "end_to_end_cpu_ms_net_of_idle": _minus(rb["cpu_ms_per_backup_net_of_idle"],
                                                        f["cpu_ms_per_backup_net_of_idle"]),
                "steady_wall_ms": _minus(rb["steady_wall_ms_per_backup"], f["steady_wall_ms_per_backup"]),
                "end_to_end_wall_ms": _minus(rb["wall_ms_per_backup"], f["wall_ms_per_backup"]),
            }
            if "pipeline" in per:
                p = per["pipeline"]
                row["added"]["steady_cpu_ms_pipeline"] = _minus(p["steady_cpu_ms_per_backup"],
                                                                f["steady_cpu_ms_per_backup"])
                row["added"]["steady_cpu_ms_ray"] = _minus(rb["steady_cpu_ms_per_backup"],
                                                           p["steady_cpu_ms_per_backup"])
            row["goal_met"] = (row["added"]["steady_cpu_ms"] or 0) <= GOAL_CPU_MS
        out.append(row)
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def table(doc: dict) -> str:
    rows = []
    for s in doc["summary"]:
        for variant, v in s["variants"].items():
            rows.append([s["concurrency"], variant, v["steady_cpu_ms_per_backup"], v["cpu_ms_per_backup"],
                         v.get("cpu_ms_per_backup_net_of_idle"), v["steady_wall_ms_per_backup"],
                         v["wall_ms_per_backup"], v["kafka_cpu_ms_per_backup"], v["redis_cpu_ms_per_backup"]])
        if "added" in s:
            a = s["added"]
            rows.append([s["concurrency"], "**added by ray-backup**", a["steady_cpu_ms"],
                         a["end_to_end_cpu_ms"],
                         a.get("end_to_end_cpu_ms_net_of_idle"), a["steady_wall_ms"], a["end_to_end_wall_ms"],
                         None, None])
            if "steady_cpu_ms_ray" in a:
                rows.append([s["concurrency"], "  of which Redis+normalize+Kafka / Ray",
                             f"{a['steady_cpu_ms_pipeline']} / {a['steady_cpu_ms_ray']}", None, None, None,
                             None, None, None])
    return bl.markdown_table(
        ["K", "variant", "CPU ms/backup (steady)", "CPU ms/backup (end to end)",
         "CPU ms/backup (end to end, net of Ray idle)", "wall ms/backup (steady)",
         "wall ms/backup (end to end)", "Kafka broker CPU ms/backup", "Redis CPU ms/backup"],
        rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    bl.provenance.require_clean(args.allow_dirty)
    doc = compare(args)
    doc["parameters"] = {"devices": args.devices, "concurrency": args.concurrency, "delay_s": args.delay,
                         "config_bytes": args.config_bytes, "repeats": args.repeats,
                         "variants": args.variants, "goal_cpu_ms": GOAL_CPU_MS}
    bl.publish("overhead", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
