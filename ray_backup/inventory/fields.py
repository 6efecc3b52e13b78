"""Validators for inventory fields, shared by every inventory source.

Each raises ``ValueError`` with a short reason; the source adds which row it was.
Values are quoted in reasons only through ``shown``, which caps their length.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Any

DEFAULT_PORT = 22
DEFAULT_TENANT = "00000000-0000-0000-0000-000000000000"

_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
# As `ssh-keygen -lf` prints it: unpadded base64 of a 32-byte SHA-256.
_FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}=?$")


def shown(value: Any, limit: int = 60) -> str:
    """A short quotation of a scalar; containers by type only (YAML aliases can nest deep)."""
    if not isinstance(value, (str, int, float, bool, type(None))):
        return f"a {type(value).__name__}"
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return f"a very long {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_uuid(value: Any, what: str = "id") -> str:
    """The canonical lower-case form of a UUID given as text."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a UUID string, got {shown(value)}")
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise ValueError(f"{what} is not a UUID: {shown(value)}") from None


def parse_host(value: Any, what: str = "host") -> str:
    """An IPv4/IPv6 address (canonical form) or a DNS name."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be an IP address or DNS name, got {shown(value)}")
    text = value.strip()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _is_dns_name(text):
        return text
    raise ValueError(f"{what} is not an IP address or DNS name: {shown(value)}")


def parse_db_address(value: Any, what: str = "ip_address") -> str:
    """``ip_address`` as text: ``inet`` prints ``10.0.0.1/32``, a text column may not."""
    if isinstance(value, str) and "/" in value:
        address, _, prefix = value.partition("/")
        try:
            if not prefix.isdigit():
                raise ValueError
            return str(ipaddress.ip_address(address.strip()))
        except ValueError:
            raise ValueError(f"{what} is not an IP address: {shown(value)}") from None
    return parse_host(value, what)


def _is_dns_name(text: str) -> bool:
    name = text.removesuffix(".")
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    # An all-numeric last label is a mistyped IPv4 address, never a host name.
    if labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)


def parse_port(value: Any, what: str = "port") -> int:
    """A TCP port 1-65535; None means the SSH default."""
    if value is None:
        return DEFAULT_PORT
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, got {shown(value)}")
    if not 1 <= value <= 65535:
        raise ValueError(f"{what} {shown(value)} is out of range 1-65535")
    return value


def parse_fingerprint(value: Any) -> str | None:
    """A pinned host key fingerprint, ``SHA256:`` + unpadded base64, or None."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _FINGERPRINT.match(value.strip()):
        raise ValueError(
            f"ssh_host_key_fingerprint must look like 'SHA256:' + 43 base64 characters "
            f"(as ssh-keygen -lf prints it), got {shown(value)}"
        )
    return value.strip().rstrip("=")


def optional_text(value: Any, what: str) -> str | None:
    """An optional free-text field; numbers are refused, not guessed (7.10 would read 7.1)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string (quote it in YAML), got {shown(value)}")
    return value.strip() or None


_TRUE = frozenset({"1", "true", "yes", "on", "t", "y"})
_FALSE = frozenset({"0", "false", "no", "off", "f", "n", ""})


def parse_flag(value: Any, what: str) -> bool:
    """A yes/no field; None (absent, NULL) is no. Text and 0/1 for database columns."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{what} must be true or false, got {shown(value)}")
