"""The decrypted credential document, shared by the legacy and Transit formats.

Both formats decrypt to the same JSON object: ``{"username": …, "password": …}``,
optionally tagged ``"type": "routeros"`` (untagged documents predate the tag and
are RouterOS credentials too). Messages never quote the document: it holds the
password.
"""

from __future__ import annotations

import json

from ray_backup.errors import CredentialsError
from ray_backup.models import Credentials

ROUTEROS_TYPE = "routeros"


def parse_credentials(raw: bytes, source: str) -> Credentials:
    """Turn decrypted bytes into ``Credentials``; ``source`` names the format in errors."""
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        # `from None`: a JSONDecodeError keeps the whole plaintext in `.doc`.
        raise CredentialsError(f"{source} credentials did not decrypt to JSON") from None
    if not isinstance(document, dict):
        raise CredentialsError(f"{source} credentials are not a JSON object")
    kind = document.get("type")
    if kind not in (None, "", ROUTEROS_TYPE):
        shown = repr(kind)[:40] if isinstance(kind, str) else type(kind).__name__
        raise CredentialsError(f"{source} credentials have type {shown}, not {ROUTEROS_TYPE!r}")
    username = document.get("username")
    password = document.get("password")
    if not isinstance(username, str) or not username:
        raise CredentialsError(f"{source} credentials lack a username string")
    if not isinstance(password, str):
        raise CredentialsError(f"{source} credentials lack a password string")
    return Credentials(username=username, password=password)


def dump_credentials(username: str, password: str, typed: bool = False) -> bytes:
    """The plaintext document for ``username``/``password`` (tools and tests)."""
    document = {"type": ROUTEROS_TYPE} if typed else {}
    document.update(username=username, password=password)
    return json.dumps(document).encode()
