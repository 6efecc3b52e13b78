"""The resolver: which source wins, what is missing, and the TTL cache."""

from __future__ import annotations

import base64
import threading

import pytest

from ray_backup.credentials.legacy import encrypt_credentials
from ray_backup.credentials.resolver import CredentialResolver, FileLogins
from ray_backup.errors import CredentialsError
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.models import CredentialRef, Credentials, Device, secret_digest
from ray_backup.settings import Settings

KEY = base64.b64encode(b"k" * 32).decode()
DEVICE_ID = "7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51"
TENANT = "11111111-2222-3333-4444-555555555555"


class CountingTransit:
    """Stands in for TransitClient: the HTTP side is tested against a real server."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def decrypt_credentials(self, tenant_id: str, ciphertext: str) -> Credentials:
        self.calls.append((tenant_id, ciphertext))
        return Credentials(username="transit-user", password="transit-pass")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def device(transit=None, legacy=None, inventory_file=None, device_id=DEVICE_ID) -> Device:
    ref = CredentialRef(transit=transit, legacy=legacy, inventory_file=inventory_file,
                        digest=secret_digest(transit, legacy, inventory_file))
    return Device(id=device_id, host="192.0.2.1", tenant_id=TENANT, credentials=ref)


def resolver(transit=None, clock=None, **settings) -> CredentialResolver:
    base = {"credential_encryption_key": KEY, "credential_cache_ttl": 300.0}
    base.update(settings)
    return CredentialResolver(Settings(**base), transit=transit, clock=clock or Clock())


def test_legacy():
    creds = resolver().resolve(device(legacy=encrypt_credentials(KEY, "admin", "pw")))
    assert (creds.username, creds.password) == ("admin", "pw")


def test_legacy_without_key():
    r = resolver(credential_encryption_key=None)
    with pytest.raises(CredentialsError, match="^CREDENTIAL_ENCRYPTION_KEY is not set$"):
        r.resolve(device(legacy=encrypt_credentials(KEY, "admin", "pw")))


def test_transit_wins_when_configured():
    transit = CountingTransit()
    legacy = encrypt_credentials(KEY, "admin", "pw")
    creds = resolver(transit).resolve(device(transit="vault:v1:abc", legacy=legacy))
    assert creds.username == "transit-user"
    assert transit.calls == [(TENANT, "vault:v1:abc")]


def test_legacy_serves_when_openbao_is_not_configured():
    legacy = encrypt_credentials(KEY, "admin", "pw")
    assert resolver().resolve(device(transit="vault:v1:abc", legacy=legacy)).username == "admin"


def test_transit_only_without_openbao():
    with pytest.raises(CredentialsError, match="OPENBAO_ADDR"):
        resolver().resolve(device(transit="vault:v1:abc"))


def test_no_credentials():
    with pytest.raises(CredentialsError, match="no credentials"):
        resolver().resolve(device())


def test_from_settings_builds_a_transit_client():
    r = CredentialResolver(Settings(openbao_addr="http://127.0.0.1:1", openbao_token="t"))
    assert "transit=True" in repr(r)


def test_cache_hits_until_ttl():
    transit, clock = CountingTransit(), Clock()
    r = resolver(transit, clock, credential_cache_ttl=60.0)
    d = device(transit="vault:v1:abc")
    r.resolve(d)
    clock.now += 59
    r.resolve(d)
    assert len(transit.calls) == 1
    clock.now += 2
    r.resolve(d)
    assert len(transit.calls) == 2


def test_changed_credentials_miss_the_cache():
    transit = CountingTransit()
    r = resolver(transit)
    r.resolve(device(transit="vault:v1:abc"))
    r.resolve(device(transit="vault:v1:new"))
    assert [c[1] for c in transit.calls] == ["vault:v1:abc", "vault:v1:new"]


def test_ttl_zero_disables_the_cache():
    transit = CountingTransit()
    r = resolver(transit, credential_cache_ttl=0.0)
    r.resolve(device(transit="vault:v1:abc"))
    r.resolve(device(transit="vault:v1:abc"))
    assert len(transit.calls) == 2


def test_invalidate():
    transit = CountingTransit()
    r = resolver(transit)
    d = device(transit="vault:v1:abc")
    r.resolve(d)
    r.invalidate(DEVICE_ID)
    r.resolve(d)
    r.invalidate()
    r.resolve(d)
    assert len(transit.calls) == 3


def test_failures_are_not_cached():
    r = resolver(credential_encryption_key=None)
    d = device(legacy=b"x" * 40)
    for _ in range(2):
        with pytest.raises(CredentialsError):
            r.resolve(d)


def test_cache_is_bounded(monkeypatch):
    monkeypatch.setattr("ray_backup.credentials.resolver.MAX_CACHED", 10)
    r = resolver(CountingTransit())
    for i in range(25):
        r.resolve(device(transit=f"vault:v1:{i}", device_id=f"id-{i}"))
    assert len(r._cache) <= 10


def test_concurrent_resolves():
    transit = CountingTransit()
    r = resolver(transit)
    devices = [device(transit=f"vault:v1:{i % 5}", device_id=f"id-{i % 5}") for i in range(200)]
    results = []
    threads = [threading.Thread(target=lambda d=d: results.append(r.resolve(d))) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 200
    assert len(transit.calls) >= 5  # each device at least once; races may decrypt twice


def write_inventory(path, password="pw1"):
    path.write_text(
        "devices:\n"
        f"  - id: {DEVICE_ID}\n    host: 192.0.2.1\n    username: admin\n"
        f"    password: {password!r}\n"
    )


def test_inventory_file_source(tmp_path):
    path = tmp_path / "inv.yaml"
    write_inventory(path)
    d = YamlInventory(path).load().devices[0]
    assert "pw1" not in repr(d)
    creds = resolver(credential_cache_ttl=0.0).resolve(d)
    assert (creds.username, creds.password) == ("admin", "pw1")


def test_inventory_file_rereads_a_changed_file(tmp_path):
    path = tmp_path / "inv.yaml"
    write_inventory(path)
    r = resolver(credential_cache_ttl=0.0)
    d = YamlInventory(path).load().devices[0]
    assert r.resolve(d).password == "pw1"
    write_inventory(path, password="a-longer-password")
    assert r.resolve(d).password == "a-longer-password"


def test_inventory_file_gone_or_row_removed(tmp_path):
    path = tmp_path / "inv.yaml"
    write_inventory(path)
    d = YamlInventory(path).load().devices[0]
    r = resolver(credential_cache_ttl=0.0)
    path.write_text("devices: []\n")
    with pytest.raises(CredentialsError, match="no longer a valid row"):
        r.resolve(d)
    path.unlink()
    with pytest.raises(CredentialsError, match="cannot read inventory file"):
        r.resolve(d)


def test_resolvers_sharing_file_logins_parse_an_unchanged_file_once(tmp_path, monkeypatch):
    import ray_backup.credentials.resolver as resolver_module

    path = tmp_path / "inv.yaml"
    write_inventory(path)
    d = YamlInventory(path).load().devices[0]
    parses = []
    real = resolver_module.load_secrets
    monkeypatch.setattr(resolver_module, "load_secrets", lambda p: parses.append(p) or real(p))
    shared = FileLogins()

    def fresh() -> CredentialResolver:  # a fleet worker builds one per sweep
        return CredentialResolver(Settings(credential_cache_ttl=0.0), file_logins=shared)

    assert fresh().resolve(d).password == "pw1"
    assert fresh().resolve(d).password == "pw1"
    assert len(parses) == 1
    write_inventory(path, password="a-longer-password")
    assert fresh().resolve(d).password == "a-longer-password"
    assert len(parses) == 2
    shared.clear()
    assert fresh().resolve(d).password == "a-longer-password"
    assert len(parses) == 3
