"""What a vendor driver is: commands, how to pick them, cleanup rules and validation.

A driver is data plus two small functions; adding a vendor means one module
beside ``routeros.py`` and its test captures.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from ray_backup.errors import InvalidOutput

EXPORT_MODES = ("show-sensitive", "hide-sensitive")
_CR_LF = re.compile(r"\r+\n")


@dataclass(frozen=True)
class Rule:
    """One cleanup step: a regex, what replaces it, and why it must go."""

    pattern: re.Pattern[str]
    replacement: str
    why: str
    # A literal every match contains: a text without it is left alone without running the
    # regex (most exports have none of the transient comments; a scan per rule costs).
    needle: str | None = None

    def apply(self, text: str) -> str:
        if self.needle is not None and self.needle not in text:
            return text
        return self.pattern.sub(self.replacement, text)


def rule(pattern: str, why: str, replacement: str = "", flags: int = re.MULTILINE,
         needle: str | None = None) -> Rule:
    return Rule(re.compile(pattern, flags), replacement, why, needle)


@dataclass(frozen=True)
class Driver:
    """A vendor: how to get its configuration and make it comparable."""

    name: str
    normalization_version: int
    # Run when the version is unknown; its output goes to ``parse_version``.
    version_command: str
    parse_version: Callable[[str], str | None]
    # (version or None, export mode) -> command line
    export_command: Callable[[str | None, str], str]
    cleanup: tuple[Rule, ...]
    # Returns the reason the text is not a configuration, or None when it is.
    reject_reason: Callable[[str], str | None]

    def normalize(self, raw: str) -> str:
        """Apply the cleanup rules, then the shared white-space rules."""
        # "\r\r\n" is what a pty makes of "\r\n" (onlcr): one line end, not a blank line.
        # Without "\r\r" every run of "\r" is one long: plain replaces do the regex's work
        # (a 45 KB export has ~1,300 line ends; substituting each costs the regex ~0.4 ms).
        if "\r\r" in raw:
            text = _CR_LF.sub("\n", raw).replace("\r", "\n")
        else:
            text = raw.replace("\r\n", "\n").replace("\r", "\n")
        # Trailing white space first, so that rules can anchor on line ends.
        text = "\n".join(line.rstrip() for line in text.split("\n"))
        for step in self.cleanup:
            text = step.apply(text)
        lines = [line.rstrip() for line in text.split("\n")]
        out: list[str] = []
        for line in lines:
            if line == "" and (not out or out[-1] == ""):
                continue  # leading and repeated blank lines carry no configuration
            out.append(line)
        while out and out[-1] == "":
            out.pop()
        return "\n".join(out) + "\n" if out else ""

    def validate(self, raw: str) -> None:
        """Raise ``InvalidOutput`` unless ``raw`` looks like this vendor's configuration."""
        if not raw.strip():
            raise InvalidOutput("empty output")
        reason = self.reject_reason(raw)
        if reason:
            raise InvalidOutput(reason)


def sha256_hex(normalized: str) -> str:
    """The design's hash: lowercase hex SHA-256 of the normalized text (UTF-8)."""
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def decode_output(data: bytes) -> str:
    """Device output as text: UTF-8, falling back to Latin-1 for legacy comments."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
