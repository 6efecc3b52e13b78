"""Mask secret values in configuration text, diffs and single lines.

Views show configurations with ``password=***`` unless asked otherwise, and the
stores keep ``diff_text`` and ``raw_line`` masked. Which keys are secret is
RouterOS knowledge (``drivers/routeros_history.py``); this module only finds
``key=value`` pairs, including quoted values with spaces or escapes and values
broken by RouterOS' ``\\`` + newline wrapping.
"""

from __future__ import annotations

import re

from ray_backup.drivers.routeros_history import NOT_SECRET_KEYS, SECRET_KEY_PATTERN

MASK = "***"

# A key at the start of a word, then a quoted value (escapes and wrapped lines
# inside) or a bare one (a wrap may split it too).
_PAIR = re.compile(
    r"(?<![\w.\-])(?P<key>[a-z][a-z0-9.\-]*)="
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"?|(?:\\\n[ \t]*|\\.|[^\s\\\"])*)",
    re.DOTALL | re.IGNORECASE,
)


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return key not in NOT_SECRET_KEYS and bool(SECRET_KEY_PATTERN.match(key))


def mask_secrets(text: str) -> str:
    """``text`` with every secret value replaced by ``***`` (quotes kept)."""
    if "=" not in text:
        return text
    return _PAIR.sub(_mask_pair, text)


def _mask_pair(match: re.Match[str]) -> str:
    key, value = match.group("key"), match.group("value")
    if is_secret_key(key):
        if not value:
            return match.group(0)  # "password=" with nothing after it hides nothing
        return f'{key}="{MASK}"' if value.startswith('"') else f"{key}={MASK}"
    if value.startswith('"') and "=" in value:
        # A quoted script or comment can hold "password=..." of its own.
        return f"{key}={mask_secrets(value)}"
    return match.group(0)
