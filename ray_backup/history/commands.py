"""`ray-backup history | diff | show | search`: the history views on a terminal.

Each command opens the store the settings name (``--output`` when given, else
``DATABASE_URL``, else ``./backups``), answers, and closes it. No Ray: these run
where the operator is, against the directory or database the job writes.
Exit codes: 0 found, 1 nothing found (no history, no match) or the store could not
answer (database down), 2 bad input (unknown or ambiguous device or snapshot).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ray_backup.errors import ConfigError, RayBackupError
from ray_backup.history.base import HistoryLookupError, Version
from ray_backup.history.views import DiffView, HistoryViews, Hit, NoHistory, inventory_names

EXIT_OK, EXIT_NOTHING, EXIT_USAGE = 0, 1, 2

# Colours as git prints a diff.
_ANSI = {"header": "\033[1m", "hunk": "\033[36m", "+": "\033[32m", "-": "\033[31m"}
_RESET = "\033[m"


def cmd_history(args) -> int:
    with _views(args) as views:
        versions = views.versions(args.device)
        device_id = versions[0].device_id
        if args.json:
            for version in versions:
                print(json.dumps(version.to_json()))
        else:
            print(f"{views.label(device_id)}: {len(versions)} versions, newest first")
            print("\n".join(format_history(versions)))
    return EXIT_OK


def cmd_diff(args) -> int:
    with _views(args) as views:
        change = views.diff(args.device, args.old, args.new)
        sys.stdout.write(format_diff(change, views.label(change.device_id),
                                     colour=use_colour(args.color, sys.stdout)))
    return EXIT_OK


def cmd_show(args) -> int:
    with _views(args) as views:
        version, text = views.text(args.device, args.snapshot)
        print(f"# {views.label(version.device_id)} version {version.snapshot_id} "
              f"collected {version.collected_at}", file=sys.stderr)
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    return EXIT_OK


def cmd_search(args) -> int:
    with _views(args, names_optional=True) as views:
        found = 0
        for hit in views.search(args.pattern, ignore_case=args.ignore_case):
            found += 1
            print(json.dumps(hit.to_json()) if args.json else format_hit(hit))
    if not found:
        print(f"no line matches {args.pattern!r}", file=sys.stderr)
    return EXIT_OK if found else EXIT_NOTHING


def run(fn, args) -> int:
    """Run one view command, turning lookup failures into one line and an exit code."""
    try:
        return fn(args)
    except NoHistory as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    except HistoryLookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConfigError:
        raise  # bad settings: the CLI's own handling, exit 2
    except RayBackupError as exc:  # the store cannot answer: database down, a text it cannot open
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING


# -- formatting ---------------------------------------------------------------------------


def format_history(versions: list[Version]) -> Iterator[str]:
    """One line per version: short id, time, lines added/removed, section summaries."""
    width = short_width([v.snapshot_id for v in versions])
    yield f"{'SNAPSHOT':<{width}}  {'COLLECTED (UTC)':<20}  {'ADDED':>5}  {'REMOVED':>7}  SECTIONS"
    for v in versions:
        if v.lines_added is None:
            counts, sections = f"{'':>5}  {'':>7}", "first version"
        else:
            counts = f"{'+' + str(v.lines_added):>5}  {'-' + str(v.lines_removed):>7}"
            sections = "; ".join(f"{s.component}: {s.summary}" for s in v.sections) or "-"
        yield f"{v.snapshot_id[:width]:<{width}}  {v.collected_at:<20}  {counts}  {sections}"


def format_diff(change: DiffView, label: str, colour: bool = False) -> str:
    """The unified diff with a line naming both versions; git's colours when asked."""
    width = short_width([change.old.snapshot_id, change.new.snapshot_id])
    head = (f"diff {label}: {change.old.snapshot_id[:width]} ({change.old.collected_at}) → "
            f"{change.new.snapshot_id[:width]} ({change.new.collected_at})\n")
    body = change.text or "(no change)"
    body += "" if body.endswith("\n") else "\n"
    if not colour:
        return head + body
    return _paint(head, "header") + "".join(_paint_line(line)
                                            for line in body.splitlines(keepends=True))


def short_width(ids: list[str], least: int = 8) -> int:
    """How many leading characters tell these ids apart (at least 8, what `diff` accepts)."""
    width = least
    while len({i[:width] for i in ids}) < len(set(ids)):
        width += 1
    return width


def format_hit(hit: Hit) -> str:
    return f"{hit.hostname or hit.device_id}  {hit.section or '-'}  {hit.line}"


def use_colour(choice: str, stream) -> bool:
    """``--color``: always, never, or auto (a terminal, and NO_COLOR not set)."""
    if choice == "always":
        return True
    if choice == "never":
        return False
    return stream.isatty() and not os.environ.get("NO_COLOR")


def _paint_line(line: str) -> str:
    if line.startswith(("+++", "---")):
        return _paint(line, "header")
    if line.startswith("@@"):
        return _paint(line, "hunk")
    return _paint(line, line[:1]) if line[:1] in ("+", "-") else line


def _paint(line: str, style: str) -> str:
    text = line.rstrip("\n")
    return f"{_ANSI[style]}{text}{_RESET}" + line[len(text):]


# -- opening the store ----------------------------------------------------------------------


@contextmanager
def _views(args, names_optional: bool = False) -> Iterator[HistoryViews]:
    from ray_backup.history import open_history
    from ray_backup.settings import Settings

    settings = Settings.load(config_file=args.config, inventory_file=args.inventory)
    store = open_history(settings, output_dir=args.output)
    try:
        yield HistoryViews(store, lambda: _names(settings, names_optional),
                           show_secrets=args.show_secrets)
    finally:
        store.close()


def _names(settings, optional: bool) -> dict[str, str | None]:
    try:
        return inventory_names(settings)
    except ConfigError as exc:
        if not optional:
            raise
        # A search still answers without hostnames; naming a device by hostname needs them.
        print(f"note: devices shown by id: {exc}", file=sys.stderr)
        return {}
