"""The RouterOS command line, as far as a backup tool uses it.

``respond`` turns one command line into what the device prints (CRLF). Errors
read like RouterOS' own and, as on real devices over SSH exec, do not change the
exit status (always 0).
"""

from __future__ import annotations

import dataclasses
import re

from ray_backup.simulator.device import SimDevice

# Menu tree of the commands the simulator knows; None marks a command (leaf).
_TREE: dict = {
    "export": None,
    "quit": None,
    "system": {
        "resource": {"print": None},
        "package": {"update": {"print": None}},
        "history": {"print": None},
        "identity": {"print": None},
    },
}
_EXPORT_FLAGS_V6 = frozenset({"hide-sensitive", "terse", "verbose", "compact"})
_EXPORT_FLAGS_V7 = _EXPORT_FLAGS_V6 | {"show-sensitive"}
_PRINT_FLAGS = frozenset({"without-paging", "detail"})
_WORD = re.compile(r"\S+")


@dataclasses.dataclass(frozen=True)
class Reply:
    data: bytes
    is_export: bool = False
    quits: bool = False


def respond(device: SimDevice, command: str) -> Reply:
    """What ``device`` prints for ``command``."""
    words = [(m.group(), m.start()) for m in _WORD.finditer(command)]
    if not words:
        return Reply(b"")
    path, args, error = _resolve(words)
    if error:
        return _text(error)
    if path == ("export",):
        return _export(device, args)
    bad = next(((w, at) for w, at in args if w not in _PRINT_FLAGS), None)
    if bad:
        return _text(f"expected end of command (line 1 column {bad[1] + 1})")
    if path == ("quit",):
        return Reply(_crlf("interrupted"), quits=True)
    if path == ("system", "identity", "print"):
        return _text(f"  name: {device.name}")
    if path == ("system", "resource", "print"):
        return _text(_resource(device))
    if path == ("system", "package", "update", "print"):
        return _text(_package_update(device))
    if path == ("system", "history", "print"):
        return _text(device.base.commands.get("/system history print without-paging", ""))
    return Reply(b"")  # a menu, not a command: RouterOS prints nothing over exec


def _resolve(words: list[tuple[str, int]]) -> tuple[tuple[str, ...], list[tuple[str, int]], str]:
    """Split words into a command path and its arguments, or name the bad word."""
    node: dict | None = _TREE
    path: list[str] = []
    for index, (word, at) in enumerate(words):
        if node is None:
            return tuple(path), words[index:], ""
        name = word[1:] if index == 0 and word.startswith("/") else word
        if name not in node:
            column = at + 1 + (len(word) - len(name))
            return (), [], f"bad command name {name} (line 1 column {column})"
        path.append(name)
        node = node[name]
    return tuple(path), [], ""


def _export(device: SimDevice, args: list[tuple[str, int]]) -> Reply:
    allowed = _EXPORT_FLAGS_V6 if device.major < 7 else _EXPORT_FLAGS_V7
    flags = set()
    for word, at in args:
        if word not in allowed:
            # RouterOS 6 has no show-sensitive: "/export show-sensitive" fails at column 9.
            return _text(f"expected end of command (line 1 column {at + 1})")
        flags.add(word)
    if device.major < 7:
        sensitive = "hide-sensitive" not in flags  # RouterOS 6 shows secrets by default
    else:
        sensitive = "show-sensitive" in flags  # RouterOS 7 hides them by default
    data = device.export_bytes(sensitive=sensitive, terse="terse" in flags)
    return Reply(data, is_export=True)


def _resource(device: SimDevice) -> str:
    text = device.base.commands.get("/system resource print", "")
    return re.sub(r"(version: )\S+", lambda m: m.group(1) + device.routeros_version, text, count=1)


def _package_update(device: SimDevice) -> str:
    text = device.base.commands.get("/system package update print", "")
    if device.routeros_version != device.base.version:
        # The captured "latest-version"/"status" were relative to the captured release.
        text = "\n".join(
            line for line in text.split("\n") if not re.match(r"\s*(latest-version|status):", line)
        )
    return re.sub(r"(installed-version: )\S+", lambda m: m.group(1) + device.routeros_version, text)


def _text(text: str) -> Reply:
    return Reply(_crlf(text))


def _crlf(text: str) -> bytes:
    if not text:
        return b""
    return (text.replace("\r\n", "\n").rstrip("\n").replace("\n", "\r\n") + "\r\n").encode()
