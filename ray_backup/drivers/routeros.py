"""MikroTik RouterOS: export commands, cleanup rules and validation."""

from __future__ import annotations

import re

from ray_backup.drivers.base import Driver, rule

# Bumped whenever normalization changes the hash of an unchanged configuration.
# Version 1 is the Go reference's; 2 also joins wrapped lines and drops
# transient comments, so its hashes are not comparable with version 1.
NORMALIZATION_VERSION = 2

_VERSION_LINE = re.compile(r"^\s*version:\s*(\d+(?:\.\d+)*)", re.MULTILINE)
_HEADER_VERSION = re.compile(r"^# \S+ \S+ by RouterOS (\d+(?:\.\d+)*)", re.MULTILINE)
_MENU_LINE = re.compile(r"^/[a-z]", re.MULTILINE)
_ERROR_LINE = re.compile(
    r"^(bad command name|expected end of command|syntax error|failure:|no such item|"
    r"input does not match any value)",
    re.MULTILINE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# ANSI colour and cursor sequences (CSI), which a device prints when it thinks a terminal is there.
_TERMINAL_ESCAPE = r"\x1b\[[0-9;?]*[A-Za-z]"


def parse_version(text: str) -> str | None:
    """The version from `/system resource print` or from an export's header."""
    # The literals first: a regex scan of a whole export that has neither costs ~1 ms.
    found = ((_VERSION_LINE.search(text) if "version:" in text else None)
             or (_HEADER_VERSION.search(text) if " by RouterOS " in text else None))
    return found.group(1) if found else None


def major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def export_command(version: str | None, mode: str) -> str:
    """RouterOS 7 hides secrets unless asked; RouterOS 6 shows them unless asked.

    Hiding is always asked for explicitly (both releases accept the flag): a version
    that is unknown, or stale in the inventory, must not turn into an export of secrets.
    """
    if mode == "hide-sensitive":
        return "/export hide-sensitive"
    return "/export" if major(version) == 6 else "/export show-sensitive"


def reject_reason(text: str) -> str | None:
    # Judged without terminal escapes: normalization strips them, and a coloured
    # export is a configuration, not binary output.
    if "\x1b" in text:
        text = re.sub(_TERMINAL_ESCAPE, "", text)
    sample = text[:65536]
    if "\x00" in sample or len(_CONTROL.findall(sample)) > len(sample) // 100 + 8:
        return "output is binary, not a RouterOS export"
    if not _MENU_LINE.search(text):
        error = _ERROR_LINE.search(text)
        if error:
            return f"device answered with an error ({error.group(1)!r}), not a configuration"
        return "output has no RouterOS menu line (such as '/interface'), not a configuration"
    if text.rstrip().endswith("\\"):
        return "export ends inside a wrapped line"
    return None


CLEANUP = (
    # ANSI colour and cursor sequences appear when a terminal was allocated.
    rule(_TERMINAL_ESCAPE, "strip terminal escapes", needle="\x1b["),
    # The first line carries the export time and release (formats differ:
    # "# 2024-10-25 06:08:35 by RouterOS 7.16", "# jan/02/2024 10:00:00 by RouterOS 6.49").
    rule(r"\A\s*# [^\n]* by RouterOS [^\n]*\n", "drop the date and release header"),
    # Long lines are wrapped with "\" and a 4-space indent at a width that depends on
    # the terminal and the release; joining them keeps the hash independent of both.
    rule(r"\\\n {4}", "join wrapped lines", needle="\\\n    "),
    # Comments RouterOS adds about the moment's state, not the configuration:
    rule(r"^\s*# poe-out status: .*\n", "PoE status comes and goes with the load",
         needle="# poe-out status: "),
    rule(r"^\s*# inactive time\n", "time-based rules flip between active and inactive",
         needle="# inactive time\n"),
    rule(r"^\s*# received packet from \S+ bad format\n", "intermittent VRRP/CARP collisions",
         needle=" bad format\n"),
    rule(r"^\s*# Firmware upgraded successfully.*\n", "transient until the next reboot",
         needle="# Firmware upgraded successfully"),
    rule(r"^\s*# \S+ not ready\n", "SFP modules report 'not ready' intermittently",
         needle=" not ready\n"),
    rule(r"^\s*# [Ii]nterface not running\n", "link state, not configuration",
         needle="nterface not running\n"),
)

DRIVER = Driver(
    name="routeros",
    normalization_version=NORMALIZATION_VERSION,
    version_command="/system resource print",
    parse_version=parse_version,
    export_command=export_command,
    cleanup=CLEANUP,
    reject_reason=reject_reason,
)
