"""How RouterOS prints a configuration: header, wrapping, hidden secrets, sections.

Pure text functions, shared by the capture loader and the simulated devices.
An *entry* is one logical export line as printed: a long line stays one entry,
with RouterOS' ``\\`` + newline + 4 spaces wrapping inside it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence

# RouterOS wraps so that every printed line, "\" included, fits in 79 columns.
WRAP_WIDTH = 79
CONTINUATION = "\\\n    "

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_VERSION_NUMBERS = re.compile(r"\d+")
# Properties RouterOS treats as sensitive: dropped by hide-sensitive (and by plain
# /export on RouterOS 7), printed by show-sensitive (and by plain /export on 6).
SENSITIVE_KEYS = (
    "password",
    "secret",
    "wpa-pre-shared-key",
    "wpa2-pre-shared-key",
    "private-key",
    "preshared-key",
    "authentication-password",
    "encryption-password",
    "passphrase",
)
_SENSITIVE_NAMES = "|".join(re.escape(key) for key in SENSITIVE_KEYS)
_SENSITIVE = re.compile(rf" (?:{_SENSITIVE_NAMES})=(?:\"(?:[^\"\\]|\\.)*\"|\S*)")
_TOKEN = re.compile(r'(?:[^\s"]|"(?:[^"\\]|\\.)*"?)+')
_HEADER_LINE = re.compile(
    r"^#(?:| \S+ \S+ by RouterOS .*| (?:software id|model|serial number) = .*)$"
)
_PLAIN_VALUE = re.compile(r"[\w.:/@,+!*-]+")


def parse_version(version: str) -> tuple[int, ...]:
    """``"7.15.2"`` → ``(7, 15, 2)``; ``"7.16rc2"`` → ``(7, 16, 2)`` (close enough to order)."""
    return tuple(int(n) for n in _VERSION_NUMBERS.findall(version or ""))


def header_date(version: str, now: dt.datetime) -> str:
    """The export's date as the release prints it: ISO-like since 7.10,
    ``jan/02/2024 11:07:28`` before (RouterOS 6 and early 7)."""
    if parse_version(version) >= (7, 10):
        return now.strftime("%Y-%m-%d %H:%M:%S")
    return f"{_MONTHS[now.month - 1]}/{now:%d/%Y %H:%M:%S}"


def header(version: str, fields: dict[str, str], now: dt.datetime) -> list[str]:
    """The comment block every export starts with."""
    lines = [f"# {header_date(version, now)} by RouterOS {version}"]
    if "software id" in fields:
        lines.append(f"# software id = {fields['software id']}")
    if "model" in fields or "serial number" in fields:
        lines.append("#")
        lines += [f"# {key} = {fields[key]}" for key in ("model", "serial number") if key in fields]
    return lines


def strip_header(text: str) -> str:
    """An export without its leading header comment block."""
    lines = text.replace("\r\n", "\n").split("\n")
    start = 0
    while start < len(lines) and _HEADER_LINE.match(lines[start].rstrip()):
        start += 1
    return "\n".join(lines[start:])


def split_entries(text: str) -> list[str]:
    """Physical lines grouped into entries (wrapped lines stay together)."""
    entries: list[str] = []
    pending = ""
    for line in text.replace("\r\n", "\n").split("\n"):
        pending = f"{pending}\n{line}" if pending else line
        if not line.endswith("\\"):
            entries.append(pending)
            pending = ""
    if pending:
        entries.append(pending)
    while entries and not entries[-1].strip():
        entries.pop()
    return entries


def unwrap(entry: str) -> str:
    return entry.replace(CONTINUATION, "")


def wrap(line: str, width: int = WRAP_WIDTH) -> str:
    """Wrap one logical line the way RouterOS does: break between properties, or
    after a property's ``=`` when its value does not fit, keeping room for `` \\``."""
    if len(line) + 2 <= width:
        return line  # nothing to wrap: the common case, kept cheap for big configs
    tokens = _TOKEN.findall(line)
    if not tokens:
        return line
    out, current = [], tokens[0]
    for token in tokens[1:]:
        if len(current) + 1 + len(token) + 2 <= width:
            current = f"{current} {token}"
            continue
        key, eq, value = token.partition("=")
        # Observed: a line broken after "=" stays one column shorter than one broken
        # at a space ("...comment=\"defconf: masquerade\" \" is not split after "=").
        if eq and value and len(current) + len(key) + 3 <= width - 1:
            out.append(f"{current} {key}=\\")
            current = f"    {value}"
        else:
            out.append(f"{current} \\")
            current = f"    {token}"
    out.append(current)
    return "\n".join(out)


def hide_sensitive(entry: str) -> str:
    """The entry as hide-sensitive prints it: without its secret properties."""
    if not _SENSITIVE.search(unwrap(entry)):
        return entry
    return wrap(_SENSITIVE.sub("", unwrap(entry)))


def quote(value: str) -> str:
    """A property value as RouterOS prints it: bare when safe, else quoted."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")
    return f'"{escaped}"'


def is_section(entry: str) -> bool:
    return entry.startswith("/")


def insert_lines(entries: list[str], section: str, lines: Iterable[str]) -> None:
    """Add ``lines`` at the end of ``section``; a missing section is created where
    RouterOS would print it, before the trailing run of sections that sort after it
    (exports end with /snmp, /system ..., /tool ..., in that order)."""
    lines = [wrap(line) for line in lines]
    heads = [i for i, entry in enumerate(entries) if is_section(entry)]
    if section in entries:
        start = entries.index(section)
        end = next((i for i in heads if i > start), len(entries))
        entries[end:end] = lines
        return
    position = len(entries)
    for i in reversed(heads):
        if entries[i] <= section:
            break
        position = i
    entries[position:position] = [section, *lines]


def replace_property(entries: list[str], section: str, key: str, value: str) -> bool:
    """Set ``key=value`` on the first ``set`` line of ``section``; False if absent."""
    if section not in entries:
        return False
    start = entries.index(section)
    for i in range(start + 1, len(entries)):
        if is_section(entries[i]):
            break
        line = unwrap(entries[i])
        if line.startswith("set ") and f" {key}=" in line:
            entries[i] = wrap(
                re.sub(rf" {key}=(\"(?:[^\"\\\\]|\\\\.)*\"|\S*)", f" {key}={quote(value)}", line)
            )
            return True
    return False


def add_sections(entries: list[str], extra: Sequence[str]) -> None:
    """Merge export-style lines (section headers followed by their lines) into
    ``entries``; lines before any header go at the end, empty sections are dropped
    (RouterOS prints none)."""
    section = None
    pending: list[str] = []
    for line in [*extra, "/"]:
        if is_section(line):
            if pending:
                if section is None:
                    entries.extend(wrap(p) for p in pending)
                else:
                    insert_lines(entries, section, pending)
            section, pending = line, []
        elif line.strip():
            pending.append(line)


def terse(entries: Iterable[str]) -> list[str]:
    """``/export terse``: every line unwrapped and prefixed with its section."""
    out, section = [], ""
    for entry in entries:
        if is_section(entry):
            section = entry
        elif entry.startswith("#") or not section:
            out.append(unwrap(entry))
        else:
            out.append(f"{section} {unwrap(entry)}")
    return out
