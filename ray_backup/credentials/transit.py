"""OpenBao/Vault Transit: ``vault:v1:…`` ciphertexts with a per-tenant key.

One HTTP call per decryption (``POST /v1/<mount>/decrypt/<key>``); the resolver's
cache keeps that rare. The history encrypts stored configurations the same way
(``POST /v1/<mount>/encrypt/<key>``), as the-other-dude does. Errors name the
HTTP status and the server's own error text, never the token or the plaintext.
"""

from __future__ import annotations

import base64
import binascii
import json
import urllib.parse
from typing import TYPE_CHECKING, Any

from ray_backup.credentials.payload import parse_credentials
from ray_backup.errors import ConfigError, CredentialsError
from ray_backup.models import Credentials
from ray_backup.settings import Settings

if TYPE_CHECKING:
    import urllib.error

CIPHERTEXT_PREFIX = "vault:v"
DEFAULT_TIMEOUT = 5.0
_MAX_SHOWN_ERROR = 200


def is_transit_ciphertext(value: str | None) -> bool:
    return bool(value) and value.startswith(CIPHERTEXT_PREFIX)


class TransitClient:
    """A minimal Transit client: encrypt and decrypt, standard library HTTP."""

    def __init__(
        self,
        addr: str,
        token: str,
        mount: str = "transit",
        key_template: str = "tenant_{tenant_id}",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if not addr.startswith(("http://", "https://")):
            raise ConfigError(f"OPENBAO_ADDR must be an http:// or https:// URL, got {addr!r}")
        self.addr = addr.rstrip("/")
        self._token = token
        self.mount = mount.strip("/")
        self.key_template = key_template
        self.timeout = timeout
        self.key_name("00000000-0000-0000-0000-000000000000")  # fail early on a bad template

    @classmethod
    def from_settings(cls, settings: Settings) -> TransitClient | None:
        """The client for ``settings``, or None when OpenBao is not configured."""
        if not (settings.openbao_addr and settings.openbao_token):
            return None
        return cls(
            settings.openbao_addr,
            settings.openbao_token,
            settings.openbao_transit_mount,
            settings.openbao_transit_key,
        )

    def __repr__(self) -> str:
        return f"TransitClient(addr={self.addr!r}, mount={self.mount!r}, token=***)"

    def key_name(self, tenant_id: str) -> str:
        try:
            return self.key_template.format(tenant_id=tenant_id)
        except (KeyError, IndexError, ValueError):
            raise CredentialsError(
                f"OPENBAO_TRANSIT_KEY {self.key_template!r} is not a valid template "
                "(only {tenant_id} may appear in braces)"
            ) from None

    def decrypt(self, tenant_id: str, ciphertext: str) -> bytes:
        """The raw plaintext of ``ciphertext`` under the tenant's key."""
        if not is_transit_ciphertext(ciphertext):
            raise CredentialsError("Transit ciphertext does not start with 'vault:v'")
        key = self.key_name(tenant_id)
        what = f"OpenBao Transit decrypt with key {key!r} at {self.addr}"
        path = f"decrypt/{urllib.parse.quote(key, safe='')}"
        body = self._post(path, {"ciphertext": ciphertext}, what)
        encoded = _dig(body, "data", "plaintext")
        if not isinstance(encoded, str):
            raise CredentialsError(f"{what}: no plaintext in the reply")
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise CredentialsError(f"{what}: plaintext is not base64") from None

    def encrypt(self, tenant_id: str, plaintext: bytes) -> str:
        """The ``vault:v…`` ciphertext of ``plaintext`` under the tenant's key."""
        key = self.key_name(tenant_id)
        what = f"OpenBao Transit encrypt with key {key!r} at {self.addr}"
        path = f"encrypt/{urllib.parse.quote(key, safe='')}"
        body = self._post(path, {"plaintext": base64.b64encode(plaintext).decode()}, what)
        ciphertext = _dig(body, "data", "ciphertext")
        if not is_transit_ciphertext(ciphertext):
            raise CredentialsError(f"{what}: no ciphertext in the reply")
        return ciphertext

    def decrypt_credentials(self, tenant_id: str, ciphertext: str) -> Credentials:
        return parse_credentials(self.decrypt(tenant_id, ciphertext), "Transit")

    def _post(self, path: str, payload: dict[str, Any], what: str) -> Any:
        # Imported on first use: the history imports this module for its ciphertext test,
        # and `ray-backup history` should not pay for an HTTP client it does not use.
        import http.client
        import urllib.error
        import urllib.request

        url = f"{self.addr}/v1/{urllib.parse.quote(self.mount)}/{path}"
        request = urllib.request.Request(
            url,
            data=json.dumps(payload).encode(),
            headers={"X-Vault-Token": self._token, "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise CredentialsError(f"{what} failed: HTTP {exc.code}{_server_errors(exc)}") from None
        except TimeoutError:
            raise CredentialsError(f"{what} timed out after {self.timeout:g} s") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):  # a connect timeout arrives wrapped
                raise CredentialsError(f"{what} timed out after {self.timeout:g} s") from None
            raise CredentialsError(f"{what} unreachable: {_reason(exc.reason)}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CredentialsError(f"{what} failed: {_reason(exc)}") from None
        try:
            return json.loads(raw)
        except ValueError:
            raise CredentialsError(f"{what}: the reply is not JSON") from None


def _dig(body: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def _server_errors(exc: urllib.error.HTTPError) -> str:
    """Vault's ``{"errors": [...]}`` text, shortened; it never holds the token."""
    try:
        errors = json.loads(exc.read()).get("errors")
    except Exception:  # any unreadable body: the status alone is still useful
        return ""
    if not isinstance(errors, list) or not errors:
        return ""
    text = "; ".join(str(e) for e in errors)
    return f" ({text[:_MAX_SHOWN_ERROR]})"


def _reason(reason: Any) -> str:
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason) or type(reason).__name__
