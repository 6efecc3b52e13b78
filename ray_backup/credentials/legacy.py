"""Legacy credentials: AES-256-GCM with the application key ``CREDENTIAL_ENCRYPTION_KEY``.

Blob layout, as the-other-dude's Python backend writes it (``nonce + AESGCM.encrypt``):
12-byte nonce ‖ ciphertext ‖ 16-byte tag. The key is standard base64 of 32 bytes.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ray_backup.credentials.payload import dump_credentials, parse_credentials
from ray_backup.errors import CredentialsError
from ray_backup.models import Credentials

NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32


def load_key(key_b64: str) -> bytes:
    """Decode the base64 key; the message never echoes it."""
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise CredentialsError("CREDENTIAL_ENCRYPTION_KEY is not standard base64") from None
    if len(key) != KEY_BYTES:
        raise CredentialsError(
            f"CREDENTIAL_ENCRYPTION_KEY must decode to {KEY_BYTES} bytes, got {len(key)}"
        )
    return key


class LegacyCipher:
    """Decrypts (and, for tools, encrypts) legacy credential blobs with one key."""

    def __init__(self, key_b64: str) -> None:
        self._aead = AESGCM(load_key(key_b64))

    def __repr__(self) -> str:
        return "LegacyCipher(key=***)"

    def decrypt(self, blob: bytes | bytearray | memoryview) -> Credentials:
        blob = bytes(blob)
        if len(blob) < NONCE_BYTES + TAG_BYTES:
            raise CredentialsError(
                f"legacy credentials blob is too short ({len(blob)} bytes, "
                f"need at least {NONCE_BYTES + TAG_BYTES})"
            )
        try:
            raw = self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
        except InvalidTag:
            raise CredentialsError(
                "legacy credentials do not decrypt with CREDENTIAL_ENCRYPTION_KEY "
                "(wrong key or corrupted data)"
            ) from None
        return parse_credentials(raw, "legacy")

    def encrypt(self, username: str, password: str, typed: bool = False) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, dump_credentials(username, password, typed), None)


def decrypt_credentials(key_b64: str, blob: bytes) -> Credentials:
    """Decrypt one legacy blob; any failure is a ``CredentialsError``."""
    return LegacyCipher(key_b64).decrypt(blob)


def encrypt_credentials(key_b64: str, username: str, password: str, typed: bool = False) -> bytes:
    """Encrypt credentials the way the-other-dude stores them (test fixtures seed rows with it)."""
    return LegacyCipher(key_b64).encrypt(username, password, typed)
