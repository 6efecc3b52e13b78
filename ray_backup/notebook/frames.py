"""The notebook's tables as pandas DataFrames, and a diff that shows coloured.

Times become timezone-aware ``Timestamp``s (UTC), so that ``df.sort_values``,
``df[df.last_success < ...]`` and ``df.plot`` work as pandas users expect.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import pandas as pd

from ray_backup.history.base import Version
from ray_backup.history.views import Hit

STATUS_COLUMNS = ("hostname", "device_id", "host", "port", "status", "last_success",
                  "last_attempt", "error_kind", "error", "consecutive_failures", "sha256_hash",
                  "next_due", "node")
RESULT_COLUMNS = ("hostname", "device_id", "status", "error_kind", "error", "sha256_hash",
                  "duration_s")
HISTORY_COLUMNS = ("device_id", "hostname", "snapshot_id", "collected_at", "lines_added",
                   "lines_removed", "sections", "sha256_hash")
SEARCH_COLUMNS = ("hostname", "device_id", "section", "line")


def status_frame(rows: Iterable[dict]) -> pd.DataFrame:
    """The job's per-device status (``supervisor.status()`` rows), one row per device."""
    frame = pd.DataFrame([{
        **row,
        "last_success": row.get("last_success_at"),
        "last_attempt": row.get("last_attempt_at"),
        "error_kind": row.get("last_error_kind"),
        "error": row.get("last_error"),
        "node": (row.get("node_id") or "")[:8] or None,
    } for row in rows], columns=STATUS_COLUMNS)
    for column in ("last_success", "last_attempt", "next_due"):
        frame[column] = pd.to_datetime(frame[column], unit="s", utc=True).dt.floor("s")
    return frame.sort_values(["hostname", "device_id"], na_position="last", ignore_index=True)


def results_frame(results: Iterable[dict], names: dict[str, str | None]) -> pd.DataFrame:
    """Backup results, one row per device, with the inventory's hostname."""
    rows = [{"hostname": names.get(r["device_id"]), **r} for r in results]
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return frame.sort_values(["hostname", "device_id"], na_position="last", ignore_index=True)


def history_frame(versions: Iterable[Version], names: dict[str, str | None]) -> pd.DataFrame:
    """Versions, one row each; ``sections`` is the change summary as one string."""
    rows = [{**v.to_json(), "hostname": names.get(v.device_id),
             "sections": "; ".join(f"{s.component}: {s.summary}" for s in v.sections)}
            for v in versions]
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    frame["collected_at"] = pd.to_datetime(frame["collected_at"], utc=True)
    for column in ("lines_added", "lines_removed"):  # None for a first version: a nullable int
        frame[column] = frame[column].astype("Int64")
    return frame


def search_frame(hits: Iterable[Hit]) -> pd.DataFrame:
    return pd.DataFrame([h.to_json() for h in hits], columns=SEARCH_COLUMNS)


def device_ids(frame: pd.DataFrame) -> list[str]:
    return frame["device_id"].tolist()


class Diff(str):
    """A unified diff (a ``str``); coloured in a notebook, '(no change)' when empty."""

    def _repr_html_(self) -> str:
        if not self:
            return "<pre>(no change)</pre>"
        colour = {"+": "#1a7f37", "-": "#cf222e", "@": "#0969da"}
        lines = []
        for line in self.splitlines():
            style = colour.get(line[:1]) if not line.startswith(("+++", "---")) else None
            text = html.escape(line)
            lines.append(f'<span style="color:{style}">{text}</span>' if style else text)
        return "<pre>" + "\n".join(lines) + "</pre>"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self) or "(no change)")

