"""Whole processes: a bare paramiko pool vs `ray-backup backup --json`, Ray warm and cold.

    python benchmarks/sweep_vs_pool.py --devices 240 --concurrency 10,40 --delay 0.4 \
        --config-bytes 45000

The comparison of issue 11's table, as a new user would run it: each run is a whole
process, timed from its start to its exit, against the same fleet (by default the
independent asyncssh servers, each answering a padded export after ``--delay`` s;
``--fleet simulator`` for ours, delaying exports only):

- ``pool``: ``benchlib/bare_pool.py``, a ThreadPoolExecutor of K paramiko sessions doing
  login + export + read (no ray-backup code at all);
- ``warm``: ``ray-backup backup --inventory … --json`` with ``RAY_ADDRESS`` at a Ray
  started before (``ray start --head --block``, 2 CPUs, token authentication: the CLI
  sets ``RAY_AUTH_MODE=token`` and reads the same private token file);
- ``cold``: the same command with ``RAY_ADDRESS=local``: the CLI starts its own Ray and
  stops it before it exits (at ``--cold-concurrency``, default 10; the warm head is
  stopped by then);
- ``job``: the ``warm`` command while the long-running job runs on that head
  (``ray-backup run --inventory …`` as its driver, ``CONFIG_BACKUP_MAX_CONCURRENT`` = K,
  first backups a day away so it backs nothing up itself): the sweep takes its permits
  from the job's SSH semaphore actor, as an engineer's notebook does next to the job (at
  ``--job-concurrency``, default none).

``CONFIG_BACKUP_MAX_CONCURRENT`` is K; host keys are known (stored beforehand, the steady
state); snapshots go to a scratch directory (no Redis, no Kafka). The ratio is the
pool's time over ray-backup's (above 1: ray-backup is faster). Runs go in the order
pool, warm for each K, job for each K, then cold; ``--repeats`` repeats that, medians are
reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

BIN = Path(sys.executable).parent
POOL = Path(bl.__file__).with_name("bare_pool.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--devices", type=int, default=240, help="fleet size (default 240)")
    p.add_argument("--concurrency", type=bl.int_list, default=[10, 40],
                   help="K values with Ray already running (default 10,40)")
    p.add_argument("--cold-concurrency", type=bl.int_list, default=[10],
                   help="K values with the CLI starting its own Ray (default 10; empty: none)")
    p.add_argument("--job-concurrency", type=bl.int_list, default=[],
                   help="K values with Ray running and the job's semaphore (default: none)")
    p.add_argument("--delay", type=float, default=0.4, help="seconds before each export (default 0.4)")
    p.add_argument("--config-bytes", type=int, default=45_000, help="export size (default 45000)")
    p.add_argument("--fleet", choices=bl.FLEETS, default="independent",
                   help="independent (asyncssh servers, default) or simulator (ours)")
    p.add_argument("--warm-up-sweeps", type=int, default=0,
                   help="untimed `ray-backup backup` sweeps against each started head before the "
                        "timed runs: ray-backup's fleet workers persist between sweeps, so this "
                        "measures every sweep but a cluster's first (default 0)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of every run; medians (default 1)")
    p.add_argument("--ray-cpus", type=int, default=2, help="num_cpus of the started head (default 2)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per run")
    p.add_argument("--output", help="results file (default benchmarks/results/sweep_vs_pool.json)")
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- one whole process


def timed(argv: list[str], env: dict[str, str], timeout: float) -> dict:
    """Run ``argv`` from a scratch directory; its wall time from start to exit, the time of
    its first stdout line and the stdout lines; killed after ``timeout`` s. A new session,
    so that whatever it leaves behind (a Ray it started) can be stopped by its group."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=tempfile.gettempdir(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    first: list[float] = []
    err: list[str] = []

    def read_stdout() -> None:
        for line in proc.stdout:
            if not first:
                first.append(time.perf_counter() - started)
            lines.append(line)

    readers = [threading.Thread(target=read_stdout, daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None  # a hung run: reported, not waited for
    wall = time.perf_counter() - started
    if code is None:
        proc.kill()
        proc.wait(10)
    stop_group(proc.pid)
    for reader in readers:
        reader.join(10)
    return {"wall_s": round(wall, 3), "first_line_s": round(first[0], 3) if first else None,
            "exit_code": code, "stdout": lines, "stderr_tail": "".join(err)[-1500:]}


def stop_group(pgid: int) -> None:
    """Kill what is left of the process group we started (a Ray that outlived its driver)."""
    import signal

    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_pool(inventory: Path, k: int, timeout: float) -> dict:
    out = timed([sys.executable, str(POOL), str(inventory), str(k)], bl.clean_env(), timeout)
    answer = json.loads(out.pop("stdout")[-1]) if out["exit_code"] == 0 else {}
    return {**out, "ok": answer.get("ok", 0), "bytes": answer.get("bytes", 0)}


def run_cli(inventory: Path, k: int, env: dict[str, str], timeout: float) -> dict:
    env = {**env, "CONFIG_BACKUP_MAX_CONCURRENT": str(k), "CONFIG_BACKUP_COMMAND_TIMEOUT": "60",
           "RAY_BACKUP_OUTPUT_DIR": bl.scratch("rb-bench-out-")}
    out = timed([str(BIN / "ray-backup"), "backup", "--inventory", str(inventory), "--json"],
                env, timeout)
    results = [json.loads(line) for line in out.pop("stdout") if line.startswith("{")]
    return {**out, "ok": sum(r.get("status") == "success" for r in results),
            "statuses": bl.status_counts(results), "first_result_s": out.pop("first_line_s")}


class RunningJob:
    """``ray-backup run`` as the job's driver on a started head, quiet (no backups of its
    own) and capped at ``k`` SSH sessions; stopped with ``ray-backup stop``."""

    def __init__(self, inventory: Path, k: int, env: dict[str, str], timeout: float) -> None:
        self.env = {**env, **bl.QUIET_JOB_ENV, "CONFIG_BACKUP_MAX_CONCURRENT": str(k),
                    "RAY_BACKUP_OUTPUT_DIR": bl.scratch("rb-bench-job-")}
        self.proc = subprocess.Popen(
            [str(BIN / "ray-backup"), "run", "--inventory", str(inventory)], env=self.env,
            cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, start_new_session=True)
        said: list[str] = []
        running = threading.Event()

        def read_log() -> None:  # all of it, so that the driver never blocks on a full pipe
            for line in self.proc.stderr:
                said.append(line)
                if "job running:" in line:  # the driver's line once every device has a loop
                    running.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not running.wait(timeout):
            self.stop()
            raise RuntimeError("the job's fleet did not start:\n" + "".join(said)[-3000:])

    def stop(self) -> None:
        subprocess.run([str(BIN / "ray-backup"), "stop"], env=self.env, cwd=tempfile.gettempdir(),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        stop_group(self.proc.pid)


# --------------------------------------------------------------------------- the comparison


def compare(args: argparse.Namespace) -> list[dict]:
    runs: list[dict] = []
    workdir = bl.scratch("rb-bench-svp-")
    auth = bl.token_auth_env(workdir)

    def record(kind: str, k: int, repeat: int, result: dict) -> None:
        runs.append({"run": kind, "concurrency": k, "repeat": repeat, "devices": args.devices,
                     "load_avg_1m_after": round(os.getloadavg()[0], 2), **result})
        print(f"K={k:3d} #{repeat} {kind:5s} {result['ok']:4d}/{args.devices} backed up "
              f"in {result['wall_s']:7.2f} s (exit {result['exit_code']})", flush=True)

    with bl.open_fleet(args.fleet, args.devices, workdir, delay=args.delay,
                       config_bytes=args.config_bytes) as fleet:
        bl.write_fingerprints(fleet.inventory, fleet.rows)
        for repeat in range(args.repeats):
            with bl.ray_head(bl.clean_env(**auth), num_cpus=args.ray_cpus) as head:
                warm = bl.clean_env(**auth, RAY_ADDRESS=head.gcs)
                for _ in range(args.warm_up_sweeps):  # untimed: the state after any sweep
                    out = run_cli(fleet.inventory, args.concurrency[0], warm, args.timeout)
                    print(f"warm-up sweep (untimed): {out['ok']}/{args.devices} in "
                          f"{out['wall_s']:.2f} s", flush=True)
                bl.wait_quiet(patience=30)
                for k in args.concurrency:
                    record("pool", k, repeat, run_pool(fleet.inventory, k, args.timeout))
                    head.check()
                    record("warm", k, repeat, run_cli(fleet.inventory, k, warm, args.timeout))
                    head.check()
                for k in args.job_concurrency:
                    if k not in args.concurrency:
                        record("pool", k, repeat, run_pool(fleet.inventory, k, args.timeout))
                    running = RunningJob(fleet.inventory, k, warm, args.timeout)
                    try:
                        bl.wait_quiet(patience=30)
                        record("job", k, repeat, run_cli(fleet.inventory, k, warm, args.timeout))
                    finally:
                        running.stop()
                    head.check()
            for k in args.cold_concurrency:
                if k not in args.concurrency:
                    record("pool", k, repeat, run_pool(fleet.inventory, k, args.timeout))
                cold = bl.clean_env(**auth, RAY_ADDRESS="local", RAY_TMPDIR=workdir)
                record("cold", k, repeat, run_cli(fleet.inventory, k, cold, args.timeout))
    return runs


RAY_COLUMN = {"warm": "already running", "job": "running, with the job's semaphore",
              "cold": "started by the CLI"}


def summarize(runs: list[dict], args: argparse.Namespace) -> list[dict]:
    rows = []
    cells = ([(k, "warm") for k in args.concurrency] + [(k, "job") for k in args.job_concurrency]
             + [(k, "cold") for k in args.cold_concurrency])
    for k, kind in cells:
        pool = [r for r in runs if (r["run"], r["concurrency"]) == ("pool", k)]
        mine = [r for r in runs if (r["run"], r["concurrency"]) == (kind, k)]
        pool_s = bl.median(r["wall_s"] for r in pool)
        rb_s = bl.median(r["wall_s"] for r in mine)
        rows.append({
            "concurrency": k, "ray": RAY_COLUMN[kind],
            "pool_wall_s": pool_s, "ray_backup_wall_s": rb_s,
            "ratio": round(pool_s / rb_s, 3) if pool_s and rb_s else None,
            "ray_backup_first_result_s": bl.median(r["first_result_s"] for r in mine),
            "pool_ok": min((r["ok"] for r in pool), default=0),
            "ray_backup_ok": min((r["ok"] for r in mine), default=0),
            "all_ok": all(r["ok"] == args.devices and r["exit_code"] == 0 for r in pool + mine),
        })
    return rows


def table(doc: dict) -> str:
    p = doc["parameters"]
    head = (f"N={p['devices']} ({p['fleet']} fleet), {p['config_bytes']:,} B exports after "
            f"{p['delay_s']} s; whole processes, median of {p['repeats']}; "
            f"{p.get('warm_up_sweeps', 0)} untimed warm-up sweep(s) per started head")
    lines = [[r["concurrency"], r["ray"], r["pool_wall_s"], r["ray_backup_wall_s"],
              f"{r['ratio']:.2f}×" if r["ratio"] else None, r["ray_backup_first_result_s"],
              f"{r['pool_ok']} / {r['ray_backup_ok']}" + ("" if r["all_ok"] else " (failures)")]
             for r in doc["summary"]]
    return head + "\n\n" + bl.markdown_table(
        ["K", "Ray", "bare paramiko pool s", "ray-backup s", "ratio", "ray-backup first result s",
         "backed up (pool / ray-backup)"], lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.provenance.require_clean(args.allow_dirty)
    runs = compare(args)
    doc = {"runs": runs, "summary": summarize(runs, args),
           "parameters": {"devices": args.devices, "concurrency": args.concurrency,
                          "cold_concurrency": args.cold_concurrency,
                          "job_concurrency": args.job_concurrency, "delay_s": args.delay,
                          "config_bytes": args.config_bytes, "fleet": args.fleet,
                          "repeats": args.repeats, "ray_cpus": args.ray_cpus,
                          "warm_up_sweeps": args.warm_up_sweeps}}
    bl.publish("sweep_vs_pool", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
