"""Configuration text at rest: Transit ciphertext, AES-256-GCM, or plaintext.

Which one is chosen by the settings, once per store:

- OpenBao configured (``OPENBAO_ADDR``/``OPENBAO_TOKEN``): ``vault:v1:…`` from
  Transit ``encrypt/<tenant key>``, exactly what the-other-dude stores in
  ``router_config_snapshots.config_text``, so its UI decrypts our rows;
- else ``CREDENTIAL_ENCRYPTION_KEY``: ``aes256gcm:v1:`` + standard base64 of
  12-byte nonce ‖ ciphertext ‖ 16-byte tag (the legacy credentials' layout), with
  the device id as associated data, so a row copied to another device fails to
  open instead of showing the wrong configuration;
- else plaintext (the README says so).

Reading looks at the stored value's prefix, not at the settings, so a history
written before a key was configured stays readable after.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ray_backup.credentials.legacy import NONCE_BYTES, TAG_BYTES, load_key
from ray_backup.credentials.transit import TransitClient, is_transit_ciphertext
from ray_backup.errors import CredentialsError
from ray_backup.settings import Settings

AES_PREFIX = "aes256gcm:v1:"


class Sealer:
    """Seals and opens one configuration text at a time; never shows the text or keys."""

    def __init__(self, transit: TransitClient | None = None, key_b64: str | None = None) -> None:
        self._transit = transit
        self._aead = AESGCM(load_key(key_b64)) if key_b64 else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        return cls(TransitClient.from_settings(settings), settings.credential_encryption_key)

    @property
    def mode(self) -> str:
        """``transit``, ``aes-256-gcm`` or ``plaintext``: what new texts get."""
        if self._transit:
            return "transit"
        return "aes-256-gcm" if self._aead else "plaintext"

    def __repr__(self) -> str:
        return f"Sealer(mode={self.mode!r})"

    def seal(self, device_id: str, tenant_id: str | None, text: str) -> str:
        if self._transit:
            return self._transit.encrypt(_tenant(device_id, tenant_id), text.encode())
        if self._aead:
            nonce = os.urandom(NONCE_BYTES)
            sealed = nonce + self._aead.encrypt(nonce, text.encode(), device_id.encode())
            return AES_PREFIX + base64.b64encode(sealed).decode()
        return text

    def open(self, device_id: str, tenant_id: str | None, stored: str) -> str:
        if is_transit_ciphertext(stored):
            if not self._transit:
                raise CredentialsError(
                    f"device {device_id}: stored configuration is Transit ciphertext "
                    "and OpenBao is not configured (OPENBAO_ADDR, OPENBAO_TOKEN)"
                )
            return self._transit.decrypt(_tenant(device_id, tenant_id), stored).decode()
        if stored.startswith(AES_PREFIX):
            return self._open_aes(device_id, stored)
        return stored

    def _open_aes(self, device_id: str, stored: str) -> str:
        if not self._aead:
            raise CredentialsError(
                f"device {device_id}: stored configuration is encrypted and "
                "CREDENTIAL_ENCRYPTION_KEY is not set"
            )
        try:
            sealed = base64.b64decode(stored[len(AES_PREFIX):], validate=True)
            if len(sealed) < NONCE_BYTES + TAG_BYTES:
                raise ValueError("too short")
            plain = self._aead.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], device_id.encode())
        except (binascii.Error, ValueError, InvalidTag):
            raise CredentialsError(
                f"device {device_id}: stored configuration does not decrypt with "
                "CREDENTIAL_ENCRYPTION_KEY (wrong key or corrupted data)"
            ) from None
        return plain.decode()


def _tenant(device_id: str, tenant_id: str | None) -> str:
    if not tenant_id:
        raise CredentialsError(f"device {device_id}: Transit needs the device's tenant id")
    return tenant_id
