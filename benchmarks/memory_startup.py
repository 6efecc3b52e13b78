"""Memory per device and start-up time of the long-running job, by fleet size.

    python benchmarks/memory_startup.py --per-device 20,50 --packed 1000,5000 --devices-per-actor 500

For each configuration a fresh child process starts a private local Ray (num_cpus 2),
writes an inventory of N devices and starts the job (``ray_backup.job.start``: SSH
semaphore, supervisor, first reconcile). Jitter is a day, so no backup runs while it
is measured. It reports:

- ``start_returned_s``: until ``job.start`` returned (the supervisor's first reconcile,
  which creates and pings every device actor);
- ``all_running_s``: until every device has its loop running (every device actor's
  ``ping`` lists it), both from the moment the job was started;
- resident (RSS) and unique (USS) memory of the job's Ray worker processes (device
  actors, supervisor, semaphore; psutil), per device: USS is what the processes hold
  alone (RSS also counts the shared libraries once per process).

``--per-device``: one actor process per device (the default layout), N as this machine's
memory allows. ``--packed``: ``RAY_BACKUP_DEVICES_PER_ACTOR`` devices per process.
Device state lives in Redis (``--redis-url``, default $REDIS_URL or
redis://127.0.0.1:6379/0 when reachable; ``none`` keeps it in-process).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

GOAL_BYTES_PER_DEVICE = 256 * 1024
GOAL_START_S = 60.0
GOAL_START_DEVICES = 1000
JOB_ACTORS = ("ray::DeviceBackupActor", "ray::BackupSupervisor", "ray::SSHSemaphore")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--per-device", type=bl.int_list, default=[20, 50],
                   help="fleet sizes with one actor per device (default 20,50)")
    p.add_argument("--packed", type=bl.int_list, default=[1000, 5000],
                   help="fleet sizes with packed actors (default 1000,5000)")
    p.add_argument("--devices-per-actor", type=int, default=500, help="packing (default 500)")
    p.add_argument("--repeats", type=int, default=1, help="runs per configuration; medians")
    p.add_argument("--redis-url", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds to wait after all loops run before reading memory")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--output", help="results file (default benchmarks/results/memory_startup.json)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)  # N, run in this process
    p.add_argument("--per-actor", type=int, default=1, help=argparse.SUPPRESS)
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one configuration


def measure(n: int, per_actor: int, ray_cpus: int, settle: float, timeout: float) -> dict:
    import ray  # noqa: F401

    from ray_backup import job

    settings, env = bl.quiet_job_settings("rb-bench-mem-", n, per_actor)
    with bl.local_ray(num_cpus=ray_cpus):
        bl.wait_quiet()
        idle = {label: bl.memory_of(procs) for label, procs in bl.ray_processes().items()}
        started = time.perf_counter()
        job.start(settings, env)
        start_returned = time.perf_counter() - started
        all_running, polls, loops = None, 0, 0
        while time.perf_counter() - started < timeout:
            hosted = bl.hosted_loops()
            loops = sum(len(info["device_ids"]) for info in hosted.values())
            polls += 1
            if loops >= n:
                all_running = time.perf_counter() - started
                break
            time.sleep(0.5)
        time.sleep(settle)
        memory = {label: bl.memory_of(procs) for label, procs in bl.ray_processes().items()}
        actors = len(bl.hosted_loops())
        removed = job.stop_all(grace_s=5)
    job_procs = {k: v for k, v in memory.items() if k in JOB_ACTORS}
    device_actors = memory.get("ray::DeviceBackupActor", {"processes": 0, "rss_bytes": 0, "uss_bytes": 0})
    total_uss = sum(v["uss_bytes"] for v in job_procs.values())
    total_rss = sum(v["rss_bytes"] for v in job_procs.values())
    return {
        "devices": n, "devices_per_actor": per_actor, "device_actors": actors,
        "start_returned_s": round(start_returned, 2),
        "all_running_s": round(all_running, 2) if all_running else None,
        "loops_running": loops, "stopped_actors": removed,
        "uss_bytes_per_device": round(total_uss / n),
        "rss_bytes_per_device": round(total_rss / n),
        "device_actor_uss_bytes_per_device": round(device_actors["uss_bytes"] / n),
        "device_actor_rss_bytes_per_device": round(device_actors["rss_bytes"] / n),
        "uss_bytes_per_actor_process": round(device_actors["uss_bytes"] / max(device_actors["processes"], 1)),
        "rss_bytes_per_actor_process": round(device_actors["rss_bytes"] / max(device_actors["processes"], 1)),
        "memory_by_process": memory,
        "idle_ray_memory": idle,
    }


# --------------------------------------------------------------------------- the sweep


def configurations(args: argparse.Namespace) -> list[tuple[str, int, int]]:
    return ([("one actor per device", n, 1) for n in args.per_device]
            + [("packed", n, args.devices_per_actor) for n in args.packed])


def sweep(args: argparse.Namespace) -> dict:
    from tests.support import services as svc

    prefix = None
    env = bl.clean_env()
    if args.redis_url.lower() != "none" and svc.reachable_redis(args.redis_url):
        prefix = f"rb_bench_{uuid.uuid4().hex[:8]}:"
        env.update(REDIS_URL=args.redis_url, RAY_BACKUP_REDIS_PREFIX=prefix)
    runs = []
    try:
        for mode, n, per_actor in configurations(args):
            for repeat in range(args.repeats):
                argv = [str(Path(__file__).resolve()), "--child", str(n), "--per-actor", str(per_actor),
                        "--ray-cpus", str(args.ray_cpus), "--settle", str(args.settle),
                        "--timeout", str(args.timeout)]
                result = bl.run_child(argv, args.timeout + 300, env=env)
                runs.append({"mode": mode, "repeat": repeat, **result})
                print(f"{mode:22s} N={n:5d} ({per_actor}/actor): running in {result['all_running_s']} s, "
                      f"USS {result['uss_bytes_per_device'] / 1024:.0f} KiB/device, "
                      f"RSS {result['rss_bytes_per_device'] / 1024:.0f} KiB/device", flush=True)
                if prefix:
                    svc.delete_prefix(args.redis_url, prefix)
    finally:
        if prefix:
            svc.delete_prefix(args.redis_url, prefix)
    return {"runs": runs, "summary": summarize(runs), "state": "redis" if prefix else "in-process"}


def summarize(runs: list[dict]) -> list[dict]:
    out = []
    for key in sorted({(r["mode"], r["devices"], r["devices_per_actor"]) for r in runs},
                      key=lambda k: (k[2] != 1, k[1])):
        mine = [r for r in runs if (r["mode"], r["devices"], r["devices_per_actor"]) == key]
        row = {
            "mode": key[0], "devices": key[1], "devices_per_actor": key[2],
            "device_actors": mine[0]["device_actors"],
            "all_running_s": bl.median(r["all_running_s"] for r in mine),
            "start_returned_s": bl.median(r["start_returned_s"] for r in mine),
            "uss_kib_per_device": round(bl.median(r["uss_bytes_per_device"] for r in mine) / 1024, 1),
            "rss_kib_per_device": round(bl.median(r["rss_bytes_per_device"] for r in mine) / 1024, 1),
            "uss_mib_per_actor_process": round(
                bl.median(r["uss_bytes_per_actor_process"] for r in mine) / 2**20, 1),
            "rss_mib_per_actor_process": round(
                bl.median(r["rss_bytes_per_actor_process"] for r in mine) / 2**20, 1),
            "all_ok": all(r["all_running_s"] is not None for r in mine),
        }
        if key[2] > 1:
            row["memory_goal_met"] = row["uss_kib_per_device"] * 1024 <= GOAL_BYTES_PER_DEVICE
        if key[1] >= GOAL_START_DEVICES:
            row["start_goal_met"] = row["all_running_s"] is not None and row["all_running_s"] <= GOAL_START_S
        out.append(row)
    return out


def table(doc: dict) -> str:
    rows = [[s["mode"], s["devices"], s["devices_per_actor"], s["device_actors"], s["all_running_s"],
             s["uss_kib_per_device"], s["rss_kib_per_device"], s["uss_mib_per_actor_process"],
             s["rss_mib_per_actor_process"]] for s in doc["summary"]]
    return bl.markdown_table(
        ["layout", "N", "devices/actor", "actor processes", "all loops running (s)",
         "USS KiB/device", "RSS KiB/device", "USS MiB/actor", "RSS MiB/actor"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        bl.child_answer(measure(args.child, args.per_actor, args.ray_cpus, args.settle, args.timeout))
        return 0
    bl.provenance.require_clean(args.allow_dirty)
    doc = sweep(args)
    doc["parameters"] = {"per_device": args.per_device, "packed": args.packed,
                         "devices_per_actor": args.devices_per_actor, "repeats": args.repeats,
                         "goal_bytes_per_device": GOAL_BYTES_PER_DEVICE, "goal_start_s": GOAL_START_S}
    bl.publish("memory_startup", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
