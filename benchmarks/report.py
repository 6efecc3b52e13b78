"""Print the latest results (benchmarks/results/*.json) as markdown tables.

    python benchmarks/report.py [--results DIR] [--only fleet_sweep,overhead]

Each results file is printed under the machine it ran on; the tables are the ones the
scripts print at the end of a run, so the README can be refreshed from the files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl
import connections
import fleet_sweep
import history_writers
import memory_startup
import overhead
import placement
import reconcile
import sweep_vs_pool

TABLES = {
    "fleet_sweep": fleet_sweep.table,
    "overhead": overhead.table,
    "memory_startup": memory_startup.table,
    "connections": connections.table,
    "reconcile": reconcile.table,
    "placement": placement.table,
    "history_writers": history_writers.table,
    "sweep_vs_pool": sweep_vs_pool.table,
}


def machine_line(doc: dict) -> str:
    m = doc.get("machine", {})
    return (f"{m.get('nproc')} CPUs ({m.get('cpu_model')}), {m.get('ram_gb')} GB RAM, "
            f"Python {m.get('python')}, Ray {m.get('ray')}, paramiko {m.get('paramiko')}; "
            f"load {m.get('load_avg_1m_at_start')} at start; {bl.provenance.line(doc)}, "
            f"{doc.get('finished_at')}")


def render(path: Path) -> str:
    doc = json.loads(path.read_text())
    name = doc.get("benchmark", path.stem)
    table = TABLES.get(name) or TABLES.get(name.split("-")[0])
    if table is None:
        return ""
    return f"### {path.stem}\n\n`{doc.get('command')}`\n\n{machine_line(doc)}\n\n{table(doc)}\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default=str(bl.RESULTS), help="results directory")
    p.add_argument("--only", default="", help="comma-separated result names (file stems)")
    args = p.parse_args(argv)
    only = {x for x in args.only.split(",") if x}
    for path in sorted(Path(args.results).glob("*.json")):
        if only and path.stem not in only:
            continue
        text = render(path)
        if text:
            print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
