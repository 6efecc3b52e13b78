"""Readable terminal output: progress bars and result/status tables (rich)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

_STYLE = {"success": "green", "failed": "red", "locked": "yellow", "pending": "dim"}

STATUS_FIELDS = (
    "device_id", "hostname", "host", "port", "status", "last_success_at", "last_attempt_at",
    "last_error_kind", "last_error", "consecutive_failures", "next_due", "sha256_hash",
    "node_id", "actor",
)


@contextlib.contextmanager
def progress(total: int, enabled: bool = True) -> Iterator[Callable[[dict], None]]:
    """A progress bar on stderr; yields ``advance(result)``."""
    if not enabled or total == 0:
        yield lambda result: None
        return
    counts = {"ok": 0, "failed": 0}
    bar = Progress(
        TextColumn("[bold]backing up"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[summary]}"), TimeElapsedColumn(),
        console=Console(stderr=True), transient=False,
    )
    with bar:
        task = bar.add_task("backup", total=total, summary="")

        def advance(result: dict) -> None:
            counts["ok" if result["status"] != "failed" else "failed"] += 1
            bar.update(task, advance=1, summary=f"{counts['ok']} ok, {counts['failed']} failed")

        yield advance


def print_results(results: list[dict], settings=None) -> None:
    table = Table(title="backup results", show_lines=False)
    for column in ("device", "status", "sha256", "error", "seconds"):
        table.add_column(column, overflow="fold")
    for r in sorted(results, key=lambda r: (r["status"] == "success", r["device_id"])):
        status = r["status"] if r["status"] == "success" else f"{r['status']} {r.get('error_kind') or ''}"
        table.add_row(
            r["device_id"], f"[{_STYLE.get(r['status'], 'yellow')}]{status}",
            (r.get("sha256_hash") or "")[:16], r.get("error") or "", f"{r.get('duration_s') or 0:.1f}",
        )
    console = Console()
    console.print(table)
    ok = sum(r["status"] == "success" for r in results)
    failed = sum(r["status"] == "failed" for r in results)
    console.print(f"{ok} succeeded, {failed} failed, {len(results) - ok - failed} skipped")
    if settings is not None and not settings.kafka_bootstrap_servers:
        console.print(f"snapshots written to {settings.output_dir}")


def print_status(rows: list[dict]) -> None:
    table = Table(title=f"fleet status ({len(rows)} devices)")
    for column in ("device", "address", "status", "last success", "error", "next due", "node"):
        table.add_column(column, overflow="fold")
    for r in rows:
        name = r.get("hostname") or r["device_id"]
        table.add_row(
            name, f"{r['host']}:{r['port']}", f"[{_STYLE.get(r['status'], 'yellow')}]{r['status']}",
            ago(r.get("last_success_at")), r.get("last_error_kind") or "", until(r.get("next_due")),
            (r.get("node_id") or "")[:8],
        )
    Console().print(table)


def status_json(row: dict) -> dict:
    out = {k: row.get(k) for k in STATUS_FIELDS}
    for key in ("last_success_at", "last_attempt_at", "next_due"):
        out[key] = iso(out[key])
    return out


def iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(ts: float | None) -> str:
    return "never" if not ts else f"{_span(time.time() - ts)} ago"


def until(ts: float | None) -> str:
    if not ts:
        return ""
    delta = ts - time.time()
    return "now" if delta <= 0 else f"in {_span(delta)}"


def _span(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    if seconds >= 86400:
        return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60}s"
    return f"{seconds}s"
