"""Real RouterOS captures: load them, undo their escapes, pick one for a version.

The files are Oxidized simulation data (see ``captures/NOTICE.md``): YAML whose
``commands`` maps a command line to what the device printed, written with
backslash escapes (``\\x20`` for a significant space, ``\\\\`` for a backslash).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from ray_backup.simulator import synthetic
from ray_backup.simulator.rosconfig import parse_version, split_entries, strip_header

CAPTURE_DIR = Path(__file__).with_name("captures")

_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)")
_SIMPLE_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "e": "\x1b"}
_HEADER_FIELD = re.compile(r"^# (software id|model|serial number) = (.*?)\s*$", re.MULTILINE)


def unescape(text: str) -> str:
    """Undo the captures' backslash escapes; leaves non-ASCII text alone
    (``codecs``' unicode_escape would mangle it)."""

    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x" and len(code) == 3:
            return chr(int(code[1:], 16))
        return _SIMPLE_ESCAPES.get(code, code)

    return _ESCAPE.sub(replace, text)


@dataclasses.dataclass(frozen=True)
class Capture:
    """What one real device printed, keyed by command (without the newline)."""

    name: str
    commands: Mapping[str, str]

    @property
    def export(self) -> str:
        return self.commands["/export show-sensitive"]

    @functools.cached_property
    def version(self) -> str:
        found = re.search(r" by RouterOS (\S+)", self.export)
        return found.group(1) if found else ""

    @functools.cached_property
    def header_fields(self) -> dict[str, str]:
        """``software id``, ``model`` and ``serial number`` from the export header."""
        return dict(_HEADER_FIELD.findall(self.export))

    @functools.cached_property
    def body(self) -> tuple[str, ...]:
        """The export without its header, one entry per logical line
        (a wrapped line stays one entry, with its ``\\`` + newline inside)."""
        return tuple(split_entries(strip_header(self.export)))


def available_captures() -> list[str]:
    """Names of the real captures shipped with the simulator."""
    return sorted(path.stem for path in CAPTURE_DIR.glob("*.yaml"))


@functools.cache
def load_capture(name: str) -> Capture:
    """A capture by name (``"CHR_7.16"``, with or without ``.yaml``), unescaped.
    ``synthetic.NAME`` gives the hand-written RouterOS 6 base instead."""
    name = name.removesuffix(".yaml")
    if name == synthetic.NAME:
        return Capture(name, synthetic.COMMANDS)
    path = CAPTURE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no capture named {name!r}; available: {available_captures()}")
    return Capture(name, _read_commands(path))


def _read_commands(path: Path) -> dict[str, str]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))["commands"]
    # RB5009UPrplusSplus_7.18.2.yaml lists single-key mappings; the others are one mapping.
    pairs = raw.items() if isinstance(raw, dict) else (kv for item in raw for kv in item.items())
    return {command.rstrip("\n"): unescape(text or "") for command, text in pairs}


@functools.lru_cache(maxsize=64)
def capture_for_version(version: str) -> str:
    """The capture to base a device of this RouterOS version on: the same release if
    captured, else the newest older one (else the oldest); RouterOS 6 gets the
    synthetic base, because every real capture is RouterOS 7.10 or newer."""
    wanted = parse_version(version)
    if wanted[:1] == (6,) or wanted < (7,):
        return synthetic.NAME
    by_version = sorted((parse_version(load_capture(n).version), n) for n in available_captures())
    older = [name for found, name in by_version if found <= wanted]
    return older[-1] if older else by_version[0][1]
