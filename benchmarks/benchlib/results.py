"""Results files and tables: what the numbers were measured on, medians, ratios."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from benchlib import provenance
from benchlib.common import RESULTS

# Taken when the script starts (it imports this module first), not when it saves.
_LOAD_AT_START = round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import paramiko
    import ray

    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "paramiko": paramiko.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "load_avg_1m_at_start": _LOAD_AT_START,
    }


def save(name: str, payload: dict, output: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` with machine and run details to results/<name>.json (or ``output``)."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **provenance.record(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def publish(name: str, payload: dict, output: str | os.PathLike | None,
            table: Callable[[dict], str]) -> Path:
    """``save`` the results, then print the commit and tree state, the table and the file."""
    path = save(name, payload, output)
    doc = json.loads(path.read_text())
    print(provenance.line(doc))
    print(table(doc))
    print(f"results: {path}")
    return path


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(value: float | None, reference: float | None, name: str) -> str:
    """``0.91× floor``: ``value`` as a multiple of ``reference``."""
    if not value or not reference:
        return "n/a"
    return f"{value / reference:.2f}× {name}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def status_counts(results: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = r.get("status") if r.get("status") != "failed" else f"failed:{r.get('error_kind')}"
        counts[key] = counts.get(key, 0) + 1
    return counts
