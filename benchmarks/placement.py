"""Placement balance: devices per node on a 3-node local Ray cluster.

    python benchmarks/placement.py --per-device 30 --packed 3000 --devices-per-actor 100

Each configuration runs in a fresh child process that starts a ``ray.cluster_utils.Cluster``
(a head and ``--nodes`` - 1 workers on this machine, one CPU each), starts the job over an
inventory of N devices (a day of jitter: no backup runs), waits until every device's
loop runs and counts the devices per node twice: from every device actor's own ``ping``
(where it really runs) and from the supervisor's status table after one more reconcile
(what an operator sees). The goal is an even spread: max - min <= 1 device per node
for one actor per device, <= one actor's worth of devices when packed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--nodes", type=int, default=3, help="nodes in the local cluster (default 3)")
    p.add_argument("--per-device", type=bl.int_list, default=[30],
                   help="fleet sizes with one actor per device (default 30)")
    p.add_argument("--packed", type=bl.int_list, default=[3000], help="packed fleet sizes (default 3000)")
    p.add_argument("--devices-per-actor", type=int, default=100, help="packing (default 100)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    p.add_argument("--output", help="results file (default benchmarks/results/placement.json)")
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--per-actor", type=int, default=1, help=argparse.SUPPRESS)
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


def private_cluster(nodes: int):
    """A local multi-node cluster that other Ray users on this machine cannot stumble on.

    ``Cluster`` records its address in /tmp/ray/ray_current_cluster, where a plain
    ``ray.init()`` elsewhere on the machine would find and join it; not here.
    """
    import ray._common.utils
    import ray._private.utils
    from ray.cluster_utils import Cluster

    ray._private.utils.write_ray_address = lambda *args, **kwargs: None
    ray._common.utils.reset_ray_address = lambda *args, **kwargs: None
    node = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node, "temp_dir": bl.RAY_TEMP_DIR, "include_dashboard": False})
    for _ in range(nodes - 1):
        cluster.add_node(**node)
    cluster.wait_for_nodes()
    return cluster


def measure(n: int, per_actor: int, nodes: int, timeout: float) -> dict:
    import ray

    from ray_backup import constants as C
    from ray_backup import job

    settings, env = bl.quiet_job_settings("rb-bench-placement-", n, per_actor)
    cluster = private_cluster(nodes)
    try:
        ray.init(address=cluster.address, namespace=C.NAMESPACE, log_to_driver=False)
        node_ids = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        started = time.perf_counter()
        supervisor = job.start(settings, env)
        hosted, running = {}, None
        while time.perf_counter() - started < timeout:
            hosted = bl.hosted_loops()
            if sum(len(h["device_ids"]) for h in hosted.values()) >= n:
                running = time.perf_counter() - started
                break
            time.sleep(1)
        by_actor = Counter()
        actors_by_node = Counter()
        for info in hosted.values():
            by_actor[info["node_id"]] += len(info["device_ids"])
            actors_by_node[info["node_id"]] += 1
        ray.get(supervisor.reconcile.remote(), timeout=300)
        rows = ray.get(supervisor.status.remote(), timeout=60)
        by_status = Counter(row.get("node_id") for row in rows)
        job.stop_all(grace_s=5)
    finally:
        session = cluster.head_node.get_session_dir_path()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(session, ignore_errors=True)
    name = {node: f"node{i}" for i, node in enumerate(node_ids)}
    devices = {name[k]: by_actor.get(k, 0) for k in node_ids}
    return {
        "devices": n, "devices_per_actor": per_actor, "nodes": nodes,
        "all_running_s": round(running, 2) if running else None,
        "devices_by_node": devices,
        "actors_by_node": {name[k]: actors_by_node.get(k, 0) for k in node_ids},
        "status_table_by_node": {name.get(k, str(k)): v for k, v in by_status.items()},
        "spread": max(devices.values()) - min(devices.values()),
    }


def sweep(args: argparse.Namespace) -> dict:
    runs = []
    configs = [("one actor per device", n, 1) for n in args.per_device] + \
              [("packed", n, args.devices_per_actor) for n in args.packed]
    for mode, n, per_actor in configs:
        argv = [str(Path(__file__).resolve()), "--child", str(n), "--per-actor", str(per_actor),
                "--nodes", str(args.nodes), "--timeout", str(args.timeout)]
        result = bl.run_child(argv, args.timeout + 300)
        goal = 1 if per_actor == 1 else per_actor
        result.update(mode=mode, balanced=result["spread"] <= goal)
        runs.append(result)
        print(f"{mode:22s} N={n}: devices by node {result['devices_by_node']} "
              f"(actors {result['actors_by_node']}), spread {result['spread']}", flush=True)
    return {"runs": runs}


def table(doc: dict) -> str:
    rows = []
    for r in doc["runs"]:
        rows.append([r["mode"], r["devices"], r["devices_per_actor"],
                     " / ".join(str(v) for v in r["devices_by_node"].values()),
                     " / ".join(str(v) for v in r["actors_by_node"].values()),
                     " / ".join(str(r["status_table_by_node"].get(k, 0)) for k in r["devices_by_node"]),
                     r["spread"], "yes" if r["balanced"] else "no"])
    return bl.markdown_table(["layout", "N", "devices/actor", "devices per node", "actors per node",
                              "status table per node", "max - min", "even"], rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        bl.child_answer(measure(args.child, args.per_actor, args.nodes, args.timeout))
        return 0
    bl.provenance.require_clean(args.allow_dirty)
    doc = sweep(args)
    doc["parameters"] = {"nodes": args.nodes, "per_device": args.per_device, "packed": args.packed,
                         "devices_per_actor": args.devices_per_actor}
    bl.publish("placement", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
