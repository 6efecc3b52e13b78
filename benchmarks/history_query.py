"""History queries: a device with 1,000 versions, PostgreSQL and directory stores.

    python benchmarks/history_query.py --versions 1000 --repeats 50

For each store (PostgreSQL in a fresh database on ``--database-url``, default the
server at 127.0.0.1:5432 or a private one; the directory store in a temp
directory), one device gets ``--versions`` distinct configurations of about
``--config-bytes`` (a real capture padded with address-list entries, one line
changed per version, AES-256-GCM at rest unless ``--plaintext``), stored through
``store()``. Then, ``--repeats`` times each, the library calls behind the views:
``versions()`` (the whole history, newest first), ``diff()`` of the last two
versions and ``text()`` of the newest. The median and p95 of each, and the time
``store()`` took per version while filling, are reported. When the installed
``ray-backup`` has a ``history`` command, ``ray-backup history DEVICE --output DIR
--json`` is timed too (a whole process: interpreter start, imports, the query), after
one warm-up run, with byte code cached as in an installed package.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

from ray_backup.history.directory import DirectoryHistory
from ray_backup.history.postgres import PostgresHistory
from ray_backup.history.sealing import Sealer
from ray_backup.inventory.schema import init_db
from tests.support import services as svc
from tests.support.history import DEVICE, at, capture_text, snapshot

GOAL_LIBRARY_MS = 100.0
GOAL_CLI_MS = 500.0
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--versions", type=int, default=1000, help="versions of the device (1000)")
    p.add_argument("--repeats", type=int, default=50, help="calls per query (50)")
    p.add_argument("--cli-repeats", type=int, default=7, help="CLI runs (7)")
    p.add_argument("--config-bytes", type=int, default=30_000, help="size of a version (30000)")
    p.add_argument("--plaintext", action="store_true", help="store without encryption")
    p.add_argument("--database-url", default=os.environ.get("DATABASE_URL") or DEFAULT_PG,
                   help="a server where a database may be created (default: 127.0.0.1:5432, "
                        "else a private server)")
    p.add_argument("--stores", default="postgres,directory", help="which stores (both)")
    p.add_argument("--output", help="results file (default benchmarks/results/history_query.json)")
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


def texts(count: int, size: int) -> Iterator[str]:
    """``count`` configurations of about ``size`` bytes, each differing from the last in one line."""
    base = capture_text().splitlines()
    where = base.index("/ip firewall address-list") + 1
    padding = [f"add address=198.18.{n // 250}.{n % 250} list=bench-{n % 7}" for n in range(size // 45)]
    for k in range(count):
        changed = [f"add address=203.0.113.{k % 250} comment=version-{k} list=changed"]
        yield "\n".join(base[:where] + changed + padding + base[where:]) + "\n"


def fill(store, count: int, size: int) -> list[float]:
    seconds = []
    for k, text in enumerate(texts(count, size)):
        started = time.perf_counter()
        outcome = store.store(snapshot(text, at(k / 60))).outcome
        seconds.append(time.perf_counter() - started)
        if outcome != "new":
            raise RuntimeError(f"version {k} was {outcome}, not new")
    return seconds


def timed(call: Callable[[], object], repeats: int) -> dict:
    call()  # warm: connection, page cache
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        runs.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(runs), 2),
            "p95_ms": round(sorted(runs)[max(0, int(len(runs) * 0.95) - 1)], 2)}


def measure(store, args: argparse.Namespace) -> dict:
    fill_s = fill(store, args.versions, args.config_bytes)
    newest, previous = store.versions(DEVICE, limit=2)
    assert len(store.versions(DEVICE)) == args.versions
    return {
        "store_ms_per_version": round(statistics.median(fill_s) * 1000, 2),
        "versions": timed(lambda: store.versions(DEVICE), args.repeats),
        "diff_last_two": timed(lambda: store.diff(DEVICE, previous.snapshot_id, newest.snapshot_id),
                               args.repeats),
        "text_newest": timed(lambda: store.text(DEVICE), args.repeats),
    }


@contextlib.contextmanager
def postgres_url(server_url: str) -> Iterator[str]:
    if svc.reachable_postgres(server_url):
        with svc.temporary_database(server_url, prefix="rb_bench_history_") as url:
            yield url
        return
    with svc.PostgresServer() as server, svc.temporary_database(server.url) as url:
        yield url


def cli_history(where: list[str], repeats: int, **env: str) -> dict | None:
    """``ray-backup history DEVICE --json`` as a whole process; ``where``: ``--output DIR`` or
    nothing (``env`` then names the database)."""
    exe = shutil.which("ray-backup") or str(Path(sys.executable).with_name("ray-backup"))
    probe = subprocess.run([exe, "--help"], capture_output=True, text=True, check=False)
    if " history" not in probe.stdout:
        return None  # the views are not merged into this tree yet
    argv = [exe, "history", DEVICE, *where, "--json"]
    env = bl.clean_env(**env)
    # As installed: byte code cached (a sandbox may forbid writing it), after one warm-up run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    subprocess.run(argv, capture_output=True, check=True, env=env)
    runs, cpu = [], []
    for _ in range(repeats):
        before = _children_cpu_s()
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True, env=env)
        runs.append((time.perf_counter() - started) * 1000)
        cpu.append((_children_cpu_s() - before) * 1000)
    # CPU time too: on a machine shared with other test runs, wall time mostly measures the wait.
    return {"median_ms": round(statistics.median(runs), 1), "runs_ms": [round(r, 1) for r in runs],
            "cpu_median_ms": round(statistics.median(cpu), 1)}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: argparse.Namespace) -> dict:
    key = None if args.plaintext else base64.b64encode(os.urandom(32)).decode()
    sealer = Sealer(key_b64=key)
    key_env = {"CREDENTIAL_ENCRYPTION_KEY": key} if key else {}  # how the CLI gets the key
    results: dict = {}
    stores = args.stores.split(",")
    if "postgres" in stores:
        with postgres_url(args.database_url) as url:
            init_db(url)
            store = PostgresHistory(url, sealer)
            try:
                results["postgres"] = measure(store, args)
            finally:
                store.close()
            print("postgres", results["postgres"], flush=True)
            results["cli_history_postgres"] = cli_history([], args.cli_repeats, DATABASE_URL=url,
                                                          **key_env)
    if "directory" in stores:
        workdir = Path(tempfile.mkdtemp(prefix="rb-bench-history-"))
        try:
            results["directory"] = measure(DirectoryHistory(workdir, sealer), args)
            print("directory", results["directory"], flush=True)
            results["cli_history"] = cli_history(["--output", str(workdir)], args.cli_repeats,
                                                 **key_env)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"versions": args.versions, "config_bytes": args.config_bytes,
            "encryption": sealer.mode, "results": results}


def table(doc: dict) -> str:
    rows = []
    for store, found in doc["results"].items():
        if store.startswith("cli_history") or not found:
            continue
        rows.append([store, doc["versions"], doc["encryption"], found["versions"]["median_ms"],
                     found["diff_last_two"]["median_ms"], found["text_newest"]["median_ms"],
                     found["store_ms_per_version"]])
    out = bl.markdown_table(["store", "versions", "at rest", "versions() ms", "diff() ms",
                             "text() ms", "store() ms/version"], rows)
    for key, store in (("cli_history_postgres", "PostgreSQL"), ("cli_history", "directory")):
        cli = doc["results"].get(key)
        if cli:
            out += (f"\n\n`ray-backup history --json` ({store}): median {cli['median_ms']} ms wall, "
                    f"{cli['cpu_median_ms']} ms CPU")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.provenance.require_clean(args.allow_dirty)
    doc = run(args)
    bl.publish("history_query", doc, args.output, table)
    print(f"goal: library < {GOAL_LIBRARY_MS:g} ms median, CLI < {GOAL_CLI_MS:g} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
