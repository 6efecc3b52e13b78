"""Fleet sweep: back up N simulated devices once at SSH concurrency K with three tools.

    python benchmarks/fleet_sweep.py --devices 200,1000 --concurrency 10,50 --delay 0.5

- ``ray-backup``: the one-shot fleet backup (``ray_backup.oneshot.backup_fleet``) on a
  private local Ray (``--ray-cpus``, default 2): fleet-worker actors, the SSH semaphore
  actor, validate, normalize, hash, write the snapshot (directory sink, local locks).
- ``floor``: the simplest loop doing the same SSH work: a ThreadPoolExecutor of K
  running paramiko connect + exec of the export + read. No Ray, Redis or Kafka.
- ``nornir``: Nornir's threaded runner (num_workers=K) with nornir-netmiko's
  ``netmiko_send_command`` of the export (device_type mikrotik_routeros).

All three back up the same fleet process, started once per N, one after another:
``--fleet simulator`` (default) is our simulator (``python -m ray_backup.simulator``),
``--fleet independent`` a fleet of asyncssh servers we did not write
(``tests/support/independent_ssh.py``, one port per device). The device delay applies to
exports only (``--delay-applies-to export``, as a real device, which answers typed lines at
once); ``all`` restores the simulator's old behaviour of delaying every typed line, which
made Nornir (Netmiko types ~9 lines per backup) wait ~9 times per device. Each tool
runs in a fresh child process whose process tree (driver, Ray services and workers;
never the fleet) is measured with psutil from the first connection to the last result.
Tools take turns in a rotating order per repeat; the summary reports medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

TOOLS = ("floor", "ray-backup", "nornir")
IDLE_S = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--devices", type=bl.int_list, default=[200], help="fleet sizes, e.g. 200,1000")
    p.add_argument("--concurrency", type=bl.int_list, default=[10, 50],
                   help="SSH concurrency values K, e.g. 10,50")
    p.add_argument("--delay", type=float, default=0.5,
                   help="device delay before each export, seconds (default 0.5)")
    p.add_argument("--delay-applies-to", choices=("export", "all"), default="export",
                   help="simulator only: delay exports (default), or every command line typed "
                        "(the old behaviour, which inflates Nornir's times)")
    p.add_argument("--fleet", choices=bl.FLEETS, default="simulator",
                   help="simulator (ours, paramiko) or independent (asyncssh servers)")
    p.add_argument("--config-bytes", type=int, default=30_000,
                   help="export size per device (default 30000; captures pad to 10-50 KB)")
    p.add_argument("--repeats", type=int, default=3, help="runs per tool and (N, K); medians")
    p.add_argument("--tools", default=None,
                   help="comma-separated subset of " + ", ".join(TOOLS) + " (default: all; "
                        "floor,ray-backup with --fleet independent)")
    p.add_argument("--nornir-max-devices", type=int, default=0,
                   help="back up at most this many devices with Nornir (0: all); its rate is "
                        "reported per second, so a subset keeps long runs bounded")
    p.add_argument("--ray-cpus", type=int, default=2, help="num_cpus of the local Ray (default 2)")
    p.add_argument("--first-use", action="store_true",
                   help="no stored host keys: ray-backup trusts and records every key (TOFU)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per tool run")
    p.add_argument("--output", help="results file (default benchmarks/results/fleet_sweep.json)")
    # A tool run in its own process (used by the sweep itself).
    p.add_argument("--child", choices=TOOLS, help=argparse.SUPPRESS)
    p.add_argument("--inventory", help=argparse.SUPPRESS)
    p.add_argument("--sim-pid", type=int, help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    bl.provenance.add_argument(p)
    args = p.parse_args(argv)
    if args.tools is None:
        args.tools = ",".join(t for t in TOOLS if t != "nornir" or args.fleet != "independent")
    args.tools = [t for t in args.tools.split(",") if t]
    if args.fleet == "independent" and "nornir" in args.tools and not args.child:
        p.error("nornir needs an interactive shell, which the independent server does not offer")
    unknown = set(args.tools) - set(TOOLS)
    if unknown:
        p.error(f"unknown tools {sorted(unknown)}")
    return args


# --------------------------------------------------------------------------- the three tools


def run_floor(rows: list[dict], k: int, sim_pid: int) -> dict:
    from concurrent.futures import ThreadPoolExecutor, as_completed

    import paramiko

    def backup(row: dict) -> int:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        client.connect(row["host"], row["port"], row["username"], row["password"],
                       look_for_keys=False, allow_agent=False, timeout=30)
        try:
            _, stdout, _ = client.exec_command(bl.export_command(row), timeout=60)
            return len(stdout.read())
        finally:
            client.close()

    def safe(row: dict) -> int:
        try:
            return backup(row)
        except Exception:
            return 0

    window = bl.Window(sim_pid).start()
    progress = bl.Progress(window, len(rows))
    sizes = []
    with ThreadPoolExecutor(k) as pool:
        for future in as_completed([pool.submit(safe, row) for row in rows]):
            sizes.append(future.result())
            progress.done()
    measured = window.stop()
    return {**measured, **progress.summary(), "ok": sum(1 for s in sizes if s > 1000),
            "bytes": sum(sizes)}


def run_nornir(rows: list[dict], k: int, sim_pid: int) -> dict:
    import logging

    import yaml
    from nornir import InitNornir
    from nornir.core.task import Result, Task
    from nornir_netmiko.tasks import netmiko_send_command

    logging.getLogger("nornir").setLevel(logging.CRITICAL)
    workdir = bl.scratch("rb-bench-nornir-")
    hosts = {
        row["hostname"]: {
            "hostname": row["host"], "port": row["port"], "username": row["username"],
            "password": row["password"], "platform": "mikrotik_routeros",
            "data": {"export": bl.export_command(row)},
        }
        for row in rows
    }
    host_file = Path(workdir) / "hosts.yaml"
    host_file.write_text(yaml.safe_dump(hosts))

    def export(task: Task) -> Result:
        return task.run(task=netmiko_send_command, command_string=task.host["export"],
                        read_timeout=60)

    class Count:
        """A Nornir processor: counts hosts as their task completes."""

        def task_instance_completed(self, task: Task, host, result) -> None:
            progress.done()

        def __getattr__(self, name: str):
            return lambda *args, **kwargs: None

    window = bl.Window(sim_pid).start()
    progress = bl.Progress(window, len(rows) + 1)  # the last step is closing connections
    nr = InitNornir(
        runner={"plugin": "threaded", "options": {"num_workers": k}},
        inventory={"plugin": "SimpleInventory",
                   "options": {"host_file": str(host_file),
                               "group_file": str(Path(workdir) / "groups.yaml"),
                               "defaults_file": str(Path(workdir) / "defaults.yaml")}},
        logging={"enabled": False},
    )
    result = nr.with_processors([Count()]).run(task=export)
    nr.close_connections()
    progress.done()
    measured = window.stop()
    ok = sum(1 for name, multi in result.items()
             if not multi.failed and "/interface" in (multi[-1].result or ""))
    failures = sorted({type(multi.exception).__name__ for multi in result.values() if multi.failed})
    return {**measured, **progress.summary(), "ok": ok, "failures": failures}


def run_ray_backup(inventory: str, k: int, sim_pid: int, ray_cpus: int, limit: int) -> dict:
    import ray  # noqa: F401  (imported before the window: import time is not the backup's)

    from ray_backup import job, oneshot
    from ray_backup.inventory.yamlfile import YamlInventory
    from ray_backup.settings import Settings

    out = bl.scratch("rb-bench-out-")
    os.environ.update({
        "RAY_BACKUP_INVENTORY": inventory,
        "RAY_BACKUP_OUTPUT_DIR": out,
        "CONFIG_BACKUP_MAX_CONCURRENT": str(k),
        "CONFIG_BACKUP_COMMAND_TIMEOUT": "60",
    })
    settings = Settings.load()
    env = job.actor_env()
    devices = YamlInventory(inventory).load().devices
    if limit:
        devices = devices[:limit]
    started = time.perf_counter()
    with bl.local_ray(num_cpus=ray_cpus):
        ray_start_s = time.perf_counter() - started
        settle_s = bl.wait_quiet(exclude=[sim_pid])
        # What Ray's own processes burn while nothing happens: a cost per second, not
        # per backup, that a long (low K, slow devices) run pays more of.
        idle = bl.Window(sim_pid).start()
        time.sleep(IDLE_S)
        idle_cpu_per_s = idle.stop()["cpu_s"] / IDLE_S
        window = bl.Window(sim_pid)
        progress = bl.Progress(window, len(devices))
        results: list[dict] = []

        def on_result(result: dict) -> None:
            results.append(result)
            progress.done()  # the last one stops the window before the actors are killed

        window.start()
        oneshot.backup_fleet(settings, devices, env, on_result=on_result)
        measured = window.stop()
    counts = bl.status_counts(results)
    return {**measured, **progress.summary(), "ok": counts.get("success", 0), "statuses": counts,
            "ray_start_s": round(ray_start_s, 2), "settle_s": round(settle_s, 2),
            "idle_cpu_per_s": round(idle_cpu_per_s, 4)}


def child_main(args: argparse.Namespace) -> None:
    import yaml

    rows = yaml.safe_load(Path(args.inventory).read_text())["devices"]
    if args.limit:
        rows = rows[: args.limit]
    k = args.concurrency[0]
    if args.child == "floor":
        result = run_floor(rows, k, args.sim_pid)
    elif args.child == "nornir":
        result = run_nornir(rows, k, args.sim_pid)
    else:
        result = run_ray_backup(args.inventory, k, args.sim_pid, args.ray_cpus, args.limit)
    import ray_backup

    bl.child_answer({"n": len(rows), **result, "ray_backup_path": str(Path(ray_backup.__file__).parent)})


# --------------------------------------------------------------------------- the sweep


def sweep(args: argparse.Namespace) -> dict:
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="rb-bench-sweep-") as workdir:
        for n in args.devices:
            with bl.open_fleet(args.fleet, n, workdir, delay=args.delay, config_bytes=args.config_bytes,
                               delay_applies_to=args.delay_applies_to) as sim:
                if not args.first_use:
                    bl.write_fingerprints(sim.inventory, sim.rows)
                for k in args.concurrency:
                    for repeat in range(args.repeats):
                        order = args.tools[repeat % len(args.tools):] + args.tools[:repeat % len(args.tools)]
                        for tool in order:
                            runs.append(one_run(args, sim, tool, n, k, repeat))
    return {"runs": runs, "summary": summarize(runs, args)}


def one_run(args: argparse.Namespace, sim: bl.FleetProcess, tool: str, n: int, k: int, repeat: int) -> dict:
    limit = args.nornir_max_devices if tool == "nornir" else 0
    if tool == "ray-backup" and args.first_use:
        Path(f"{sim.inventory}.hostkeys.json").unlink(missing_ok=True)
    before = sim.stats()
    argv = [str(Path(__file__).resolve()), "--child", tool, "--inventory", str(sim.inventory),
            "--sim-pid", str(sim.pid), "--concurrency", str(k), "--ray-cpus", str(args.ray_cpus),
            "--limit", str(limit)]
    result = bl.run_child(argv, args.timeout)
    after = sim.stats()
    done = result["n"]
    exports = after["exports"] - before["exports"]
    run = {
        "tool": tool, "devices": n, "concurrency": k, "repeat": repeat, **result,
        "backups_per_s": round(result["ok"] / result["wall_s"], 3) if result["wall_s"] else None,
        "cpu_ms_per_backup": round(1000 * result["cpu_s"] / max(result["ok"], 1), 3),
        "sim_cpu_ms_per_backup": round(1000 * result["sim_cpu_s"] / max(result["ok"], 1), 3),
        "cpu_ms_per_backup_net_of_idle": net_of_idle(result),
        "sim_exports": exports,
        "sim_commands_per_backup": round((after["commands"] - before["commands"]) / max(done, 1), 2),
        "sim_peak_commands": after.get("peak_active_commands"),
    }
    print(f"N={n} K={k} #{repeat} {tool:10s} ok {result['ok']}/{done} "
          f"{run['backups_per_s']:8.2f}/s  cpu {run['cpu_ms_per_backup']:7.2f} ms/backup  "
          f"sim {run['sim_cpu_ms_per_backup']:6.2f} ms/backup  wall {result['wall_s']:.1f} s",
          flush=True)
    return run


def net_of_idle(result: dict) -> float:
    """CPU per backup without what Ray's processes use idle over the same wall time."""
    idle = result.get("idle_cpu_per_s") or 0.0
    return round(1000 * (result["cpu_s"] - idle * result["wall_s"]) / max(result["ok"], 1), 3)


def summarize(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    for n in args.devices:
        for k in args.concurrency:
            cell = {}
            for tool in args.tools:
                mine = [r for r in runs if (r["devices"], r["concurrency"], r["tool"]) == (n, k, tool)]
                if not mine:
                    continue
                cell[tool] = {
                    "runs": len(mine),
                    "backed_up": mine[0]["n"],
                    "all_ok": all(r["ok"] == r["n"] for r in mine),
                    "backups_per_s": bl.median(r["backups_per_s"] for r in mine),
                    "cpu_ms_per_backup": bl.median(r["cpu_ms_per_backup"] for r in mine),
                    "sim_cpu_ms_per_backup": bl.median(r["sim_cpu_ms_per_backup"] for r in mine),
                    "cpu_ms_per_backup_net_of_idle": bl.median(
                        r["cpu_ms_per_backup_net_of_idle"] for r in mine),
                    "idle_cpu_per_s": bl.median(r.get("idle_cpu_per_s") for r in mine),
                    "steady_backups_per_s": bl.median(
                        (r.get("steady") or {}).get("per_s") for r in mine),
                    "steady_cpu_ms_per_backup": bl.median(
                        (r.get("steady") or {}).get("cpu_ms_per_item") for r in mine),
                    "first_result_s": bl.median(r.get("first_result_s") for r in mine),
                    "sim_commands_per_backup": bl.median(r["sim_commands_per_backup"] for r in mine),
                    "wall_s": bl.median(r["wall_s"] for r in mine),
                }
            rb = cell.get("ray-backup", {})
            summary = {"devices": n, "concurrency": k, "delay_s": args.delay,
                       "delay_applies_to": delay_scope(args), "fleet": args.fleet,
                       "config_bytes": args.config_bytes, "tools": cell}
            if rb:
                for ref, name in (("floor", "floor"), ("nornir", "Nornir")):
                    if ref in cell:
                        summary[f"vs_{ref}"] = bl.ratio(rb["backups_per_s"], cell[ref]["backups_per_s"], name)
                        summary[f"vs_{ref}_value"] = (round(
                            rb["backups_per_s"] / cell[ref]["backups_per_s"], 3)
                            if cell[ref]["backups_per_s"] else None)
                        summary[f"cpu_vs_{ref}"] = bl.ratio(rb["cpu_ms_per_backup"],
                                                            cell[ref]["cpu_ms_per_backup"], name)
            rows.append(summary)
    return rows


def delay_scope(args: argparse.Namespace) -> str:
    return "export" if args.fleet == "independent" else args.delay_applies_to


def table(doc: dict) -> str:
    lines = []
    for s in doc["summary"]:
        for tool, t in s["tools"].items():
            ratio_floor = s.get("vs_floor") if tool == "ray-backup" else None
            ratio_nornir = s.get("vs_nornir") if tool == "ray-backup" else None
            lines.append([s["devices"], s["concurrency"], tool,
                          f"{t['backed_up']}{'' if t['all_ok'] else ' (failures)'}",
                          t["backups_per_s"], t.get("steady_backups_per_s"), t["cpu_ms_per_backup"],
                          t.get("cpu_ms_per_backup_net_of_idle"), t["sim_cpu_ms_per_backup"],
                          t["sim_commands_per_backup"], ratio_floor, ratio_nornir])
    return bl.markdown_table(
        ["N", "K", "tool", "backed up", "backups/s", "steady backups/s", "CPU ms/backup",
         "CPU ms/backup net of Ray idle", "sim CPU ms/backup", "sim cmds/backup", "vs floor",
         "vs Nornir"], lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    bl.provenance.require_clean(args.allow_dirty)
    doc = sweep(args)
    doc["parameters"] = {"devices": args.devices, "concurrency": args.concurrency,
                         "delay_s": args.delay, "delay_applies_to": delay_scope(args),
                         "fleet": args.fleet, "config_bytes": args.config_bytes,
                         "repeats": args.repeats, "tools": args.tools, "ray_cpus": args.ray_cpus,
                         "nornir_max_devices": args.nornir_max_devices, "first_use": args.first_use}
    bl.publish("fleet_sweep", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
