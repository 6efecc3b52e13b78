"""Unified diffs of normalized configurations, and their changed-line counts.

As the-other-dude computes them (``difflib``, 3 lines of context, no line
terminators), so that its UI shows our rows the way it shows its own.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

CONTEXT_LINES = 3


@dataclass(frozen=True)
class Diff:
    """A unified diff and how many lines it adds and removes."""

    text: str
    lines_added: int
    lines_removed: int


def unified_diff(old_text: str, new_text: str, old_name: str = "old", new_name: str = "new") -> Diff:
    """The diff from ``old_text`` to ``new_text``; empty text when they are equal."""
    lines = list(difflib.unified_diff(
        old_text.splitlines(), new_text.splitlines(),
        fromfile=old_name, tofile=new_name, lineterm="", n=CONTEXT_LINES,
    ))
    added, removed = count_changed(lines)
    return Diff("\n".join(lines), added, removed)


def count_changed(diff_lines: list[str]) -> tuple[int, int]:
    """(added, removed) changed lines, not counting the ``+++``/``---`` file headers."""
    added = removed = 0
    for line in diff_lines[2:] if diff_lines[:1] and diff_lines[0].startswith("---") else diff_lines:
        if line.startswith("+"):
            added += 1
        elif line.startswith("-"):
            removed += 1
    return added, removed
