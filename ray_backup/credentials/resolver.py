"""Turn a device's ``CredentialRef`` into ``Credentials``, with a short TTL cache.

Source order: Transit (when the row has a ``vault:v…`` ciphertext and OpenBao is
configured), else the legacy AES-GCM blob, else the inventory file. A Transit-only
row without OpenBao settings is an error, not a silent skip. Decrypted
credentials stay in this object's cache and go nowhere else.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from ray_backup.credentials.legacy import LegacyCipher
from ray_backup.credentials.transit import TransitClient
from ray_backup.errors import ConfigError, CredentialsError
from ray_backup.inventory.yamlfile import load_secrets
from ray_backup.models import Credentials, Device
from ray_backup.settings import Settings

MAX_CACHED = 4096


class FileLogins:
    """Inventory files' logins by device id, parsed again only when a file changed.

    Thread-safe. A process that builds several resolvers over time (a fleet worker,
    one per sweep) shares one, so an unchanged inventory is parsed once, not per sweep.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parsing = threading.Lock()
        self._files: dict[str, tuple[tuple[int, ...], dict[str, Credentials]]] = {}

    def __repr__(self) -> str:
        return f"FileLogins(files={len(self._files)})"

    def get(self, path: str) -> dict[str, Credentials]:
        """The file's logins by id; ``CredentialsError`` when it cannot be used."""
        try:
            st = os.stat(path)
        except OSError as exc:
            raise CredentialsError(
                f"cannot read inventory file {path} on this node ({exc.strerror})"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
        # One parse per change: the many backups that start together would otherwise
        # each parse the whole file (a sweep's first K backups, one YAML parse each).
        with self._parsing:
            with self._lock:
                cached = self._files.get(path)
            if cached and cached[0] == stamp:
                return cached[1]
            try:
                logins = load_secrets(path)
            except ConfigError as exc:
                raise CredentialsError(f"cannot use inventory file: {exc}") from None
            with self._lock:
                self._files[path] = (stamp, logins)
            return logins

    def clear(self) -> None:
        with self._lock:
            self._files.clear()


class CredentialResolver:
    """Resolves and caches credentials per (device id, credential digest)."""

    def __init__(
        self,
        settings: Settings,
        transit: TransitClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        file_logins: FileLogins | None = None,
    ) -> None:
        self._ttl = settings.credential_cache_ttl
        self._key = settings.credential_encryption_key
        self._legacy: LegacyCipher | None = None
        self._transit = transit or TransitClient.from_settings(settings)
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[float, Credentials]] = {}
        self._files = file_logins or FileLogins()

    def __repr__(self) -> str:
        return f"CredentialResolver(transit={self._transit is not None}, cached={len(self._cache)})"

    def resolve(self, device: Device) -> Credentials:
        """The device's login; ``CredentialsError`` says why it cannot be had."""
        key = (device.id, device.credentials.digest)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit and hit[0] > now:
                return hit[1]
        credentials = self._fetch(device)
        if self._ttl > 0:
            with self._lock:
                self._remember(key, (now + self._ttl, credentials), now)
        return credentials

    def invalidate(self, device_id: str | None = None) -> None:
        """Forget cached credentials of one device, or of all."""
        with self._lock:
            if device_id is None:
                self._cache.clear()
                self._files.clear()
            else:
                for key in [k for k in self._cache if k[0] == device_id]:
                    del self._cache[key]

    def _remember(self, key: tuple[str, str], entry: tuple[float, Credentials], now: float) -> None:
        # A device whose credentials changed leaves its old digest behind: sweep.
        if len(self._cache) >= MAX_CACHED:
            for stale in [k for k, (until, _) in self._cache.items() if until <= now]:
                del self._cache[stale]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        self._cache[key] = entry

    def _fetch(self, device: Device) -> Credentials:
        ref = device.credentials
        if ref.transit and self._transit is not None:
            return self._transit.decrypt_credentials(device.tenant_id, ref.transit)
        if ref.legacy:
            return self._legacy_cipher().decrypt(ref.legacy)
        if ref.transit:
            raise CredentialsError(
                "credentials are Transit-encrypted but OPENBAO_ADDR/OPENBAO_TOKEN are not set"
            )
        if ref.inventory_file:
            return self._from_file(ref.inventory_file, device.id)
        raise CredentialsError("device has no credentials")

    def _legacy_cipher(self) -> LegacyCipher:
        if not self._key:
            raise CredentialsError("CREDENTIAL_ENCRYPTION_KEY is not set")
        if self._legacy is None:
            self._legacy = LegacyCipher(self._key)
        return self._legacy

    def _from_file(self, path: str, device_id: str) -> Credentials:
        logins = self._files.get(path)
        if device_id not in logins:
            raise CredentialsError(f"device is no longer a valid row of {path}")
        return logins[device_id]
