"""Summarize a diff per RouterOS section: "Added 2 filter rules", "Modified 1 address".

Each changed line belongs to the section of the nearest menu line above it in
the *full* configuration (old text for removed lines, new text for added ones),
so a hunk that starts in the middle of a long firewall still lands in
``ip/firewall/filter``. A removed and an added line of the same section are one
*modified* item when they name the same thing (same ``set`` target, ``name=``,
...) or one replaces the other in place (same command, same changed block). The RouterOS knowledge is data in
``drivers/routeros_history.py``.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from dataclasses import dataclass, field

from ray_backup.drivers.routeros_history import (
    IDENTITY_KEYS,
    ITEM_NOUNS,
    NOT_AN_ITEM,
    SECTION_HEADER,
    SETTINGS_NOUNS,
)
from ray_backup.history.base import SectionChange
from ray_backup.history.mask import mask_secrets

# Items above the first menu line (the-other-dude files them here too).
FALLBACK_COMPONENT = "system/general"
KINDS = (("added", "Added", "+"), ("removed", "Removed", "-"), ("modified", "Modified", "+"))

_IDENTITY = {
    key: re.compile(rf"(?<![\w.\-]){re.escape(key)}=(\"(?:[^\"\\]|\\.)*\"|\S+)")
    for key in IDENTITY_KEYS
}
_SET_TARGET = re.compile(r"^set\s+((?:\[[^\]]*\]|[^\s=\[]+(?=\s|$))?)")


@dataclass(frozen=True)
class _Item:
    component: str
    identity: str | None
    line: str
    block: int  # which changed block of the diff it came from
    settings: bool  # a "set" without a selector: the menu's own settings


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    first: dict[str, str] = field(default_factory=dict)
    settings_only: bool = True


def component_of(header: str) -> str:
    """``/ip firewall filter`` → ``ip/firewall/filter``."""
    return "/".join(header.strip().lstrip("/").split())


def section_per_line(lines: list[str]) -> list[str | None]:
    """The component each line belongs to (a menu line belongs to its own)."""
    current: str | None = None
    out = []
    for line in lines:
        found = SECTION_HEADER.match(line)
        if found:
            current = component_of(found.group(1))
        out.append(current)
    return out


def summarize(old_text: str, new_text: str) -> tuple[SectionChange, ...]:
    """Per-section changes from ``old_text`` to ``new_text``, in order of appearance."""
    old, new = old_text.splitlines(), new_text.splitlines()
    removed, added = _changed_items(old, new)
    tallies: dict[str, _Tally] = {}
    for item in removed + added:
        tallies.setdefault(item.component, _Tally())
    pairs, removed, added = _pair(removed, added)
    for kind, items in (("modified", pairs), ("removed", removed), ("added", added)):
        for item in items:
            tally = tallies[item.component]
            tally.counts[kind] += 1
            tally.first.setdefault(kind, item.line)
            tally.settings_only &= item.settings
    return tuple(
        SectionChange(component, _summary(verb, tally.counts[kind], component, tally.settings_only),
                      mask_secrets(prefix + tally.first[kind]))
        for component, tally in tallies.items()
        for kind, verb, prefix in KINDS
        if tally.counts[kind]
    )


def _changed_items(old: list[str], new: list[str]) -> tuple[list[_Item], list[_Item]]:
    old_sections, new_sections = section_per_line(old), section_per_line(new)
    removed: list[_Item] = []
    added: list[_Item] = []
    matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
    for block, (tag, i1, i2, j1, j2) in enumerate(matcher.get_opcodes()):
        if tag == "equal":
            continue
        removed += _items(old, old_sections, range(i1, i2), block)
        added += _items(new, new_sections, range(j1, j2), block)
    return removed, added


def _items(lines: list[str], sections: list[str | None], indexes: range, block: int) -> list[_Item]:
    items = []
    for i in indexes:
        line = lines[i]
        if NOT_AN_ITEM.match(line) or SECTION_HEADER.match(line):
            continue
        target = _SET_TARGET.match(line)
        identity = f"set {target.group(1)}" if target else _identity(line)
        settings = bool(target) and not target.group(1)
        items.append(_Item(sections[i] or FALLBACK_COMPONENT, identity, line, block, settings))
    return items


def _identity(line: str) -> str | None:
    for key, pattern in _IDENTITY.items():
        found = pattern.search(line)
        if found:
            return f"{key}={found.group(1)}"
    return None


def _pair(removed: list[_Item], added: list[_Item]) -> tuple[list[_Item], list[_Item], list[_Item]]:
    """(modified items as their new line, items only removed, items only added)."""
    pairs: list[_Item] = []
    left = list(added)
    unmatched: list[_Item] = []
    for old in removed:
        match = next((a for a in left if _same_item(old, a)), None)
        if match is None:
            match = next((a for a in left if _replaces(old, a)), None)
        if match is None:
            unmatched.append(old)
        else:
            left.remove(match)
            pairs.append(match)
    return pairs, unmatched, left


def _same_item(old: _Item, new: _Item) -> bool:
    return old.component == new.component and old.identity is not None \
        and old.identity == new.identity


def _replaces(old: _Item, new: _Item) -> bool:
    """A line replaced in place by one of the same section and command (an edited rule)."""
    return old.component == new.component and old.block == new.block \
        and old.line.split(" ", 1)[0] == new.line.split(" ", 1)[0]


def _summary(verb: str, count: int, component: str, settings_only: bool) -> str:
    singular, plural = ITEM_NOUNS.get(component) or (
        SETTINGS_NOUNS if settings_only else _default_nouns(component)
    )
    return f"{verb} {count} {singular if count == 1 else plural}"


def _default_nouns(component: str) -> tuple[str, str]:
    last = component.rsplit("/", 1)[-1]
    return f"{last} entry", f"{last} entries"
