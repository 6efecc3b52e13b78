"""PostgresInventory against a real PostgreSQL: the-other-dude's devices table."""

from __future__ import annotations

import base64
import concurrent.futures
import time
import uuid

import psycopg
import pytest

from ray_backup.credentials.legacy import encrypt_credentials
from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.errors import ConfigError, UnknownDevice
from ray_backup.inventory.postgres import PostgresInventory
from ray_backup.inventory.schema import NewDevice, add_device, add_devices, init_db
from ray_backup.settings import Settings

KEY = base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
TENANT = "11111111-2222-3333-4444-555555555555"
FP = "SHA256:" + "A" * 43
FP2 = "SHA256:" + "B" * 43

# The-other-dude's real table has many more columns and may keep ip_address as text.
TEXT_LAYOUT = """
CREATE TABLE devices (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id uuid NOT NULL,
    hostname varchar(255) NOT NULL,
    ip_address varchar(45) NOT NULL,
    api_port integer DEFAULT 8728,
    ssh_port integer,
    encrypted_credentials bytea,
    encrypted_credentials_transit text,
    routeros_version varchar(50),
    status varchar(20) DEFAULT 'unknown',
    ssh_host_key_fingerprint text,
    ssh_host_key_first_seen timestamptz,
    ssh_host_key_last_verified timestamptz,
    updated_at timestamptz DEFAULT now()
)
"""


@pytest.fixture
def db(pg_url):
    assert init_db(pg_url) is True
    return pg_url


@pytest.fixture
def inventory(db):
    inv = PostgresInventory(db)
    yield inv
    inv.close()


def sql(url: str, query: str, *params):
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else None


def test_init_db_is_idempotent_and_checks_an_existing_table(pg_url):
    assert init_db(pg_url) is True
    assert init_db(pg_url) is False
    sql(pg_url, "ALTER TABLE devices DROP COLUMN ssh_host_key_first_seen")
    with pytest.raises(ConfigError, match="lacks column.*ssh_host_key_first_seen"):
        init_db(pg_url)


def test_load_devices(db, inventory):
    first = add_device(db, "192.0.2.10", "admin", "pw", KEY, tenant_id=TENANT, hostname="core-1",
                       port=2201, routeros_version="7.16", host_key_fingerprint=FP)
    second = add_device(db, "2001:db8::1", "admin", "pw", KEY, tenant_id=TENANT)
    transit_only = add_device(db, "192.0.2.12", tenant_id=TENANT,
                              transit_ciphertext="vault:v1:abcd")
    loaded = inventory.load()
    assert loaded.errors == [] and loaded.skipped == []
    by_id = {d.id: d for d in loaded.devices}
    d = by_id[first]
    assert (d.host, d.port, d.tenant_id, d.hostname) == ("192.0.2.10", 2201, TENANT, "core-1")
    assert (d.routeros_version, d.host_key_fingerprint) == ("7.16", FP)
    assert d.credentials.legacy and d.credentials.transit is None and d.credentials.digest
    assert (by_id[second].host, by_id[second].port) == ("2001:db8::1", 22)  # NULL port → 22
    assert by_id[transit_only].credentials.transit == "vault:v1:abcd"
    assert not by_id[transit_only].credentials.legacy
    creds = CredentialResolver(Settings(credential_encryption_key=KEY)).resolve(d)
    assert (creds.username, creds.password) == ("admin", "pw")


def test_rows_without_credentials_are_skipped_not_errors(db, inventory):
    kept = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    bare = add_device(db, "192.0.2.2", hostname="no-creds")
    blank = add_device(db, "192.0.2.3", transit_ciphertext="  ")
    loaded = inventory.load()
    assert [d.id for d in loaded.devices] == [kept]
    assert loaded.errors == []
    assert sorted(loaded.skipped) == sorted([
        f"devices row (id '{bare}', hostname 'no-creds'): no credentials stored; not backed up",
        f"devices row (id '{blank}'): no credentials stored; not backed up",
    ])


def test_credential_change_changes_the_digest(db, inventory):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    before = inventory.load().devices[0].credentials.digest
    sql(db, "UPDATE devices SET encrypted_credentials = %s WHERE id = %s",
        encrypt_credentials(KEY, "admin", "new"), device_id)
    assert inventory.load().devices[0].credentials.digest != before


def test_bad_rows_are_one_error_line_each_and_the_rest_load(pg_url):
    sql(pg_url, TEXT_LAYOUT)
    blob = encrypt_credentials(KEY, "admin", "pw")
    rows = {
        "good": ("10.0.0.1", 22, blob, None),
        "good-dns": ("router.example.net", None, blob, None),
        "good-cidr": ("10.0.0.3/32", 22, blob, None),
        "bad-address": ("10.0.0.999", 22, blob, None),
        "bad-port": ("10.0.0.5", 70000, blob, None),
        "bad-port-zero": ("10.0.0.6", 0, blob, None),
        "bad-transit": ("10.0.0.7", 22, None, "not-a-vault-ciphertext"),
        "both-bad": ("not an address", -1, blob, None),
    }
    ids = {}
    for name, (address, port, legacy, transit) in rows.items():
        ids[name] = str(uuid.uuid4())
        sql(pg_url, "INSERT INTO devices (id, tenant_id, hostname, ip_address, ssh_port,"
            " encrypted_credentials, encrypted_credentials_transit) VALUES (%s,%s,%s,%s,%s,%s,%s)",
            ids[name], TENANT, name, address, port, legacy, transit)
    inv = PostgresInventory(pg_url)
    try:
        loaded = inv.load()
    finally:
        inv.close()
    assert sorted(d.hostname for d in loaded.devices) == ["good", "good-cidr", "good-dns"]
    assert {d.hostname: d.host for d in loaded.devices}["good-cidr"] == "10.0.0.3"
    errors = {line.split("hostname '")[1].split("'")[0]: line for line in loaded.errors}
    assert sorted(errors) == ["bad-address", "bad-port", "bad-port-zero", "bad-transit", "both-bad"]
    assert "ip_address is not an IP address or DNS name: '10.0.0.999'" in errors["bad-address"]
    assert "ssh_port 70000 is out of range 1-65535" in errors["bad-port"]
    assert "'vault:v…' ciphertext" in errors["bad-transit"]
    assert "ip_address" in errors["both-bad"] and "ssh_port -1" in errors["both-bad"]
    assert errors["bad-port"].startswith(f"devices row (id '{ids['bad-port']}'")


def test_inet_with_a_netmask_reads_the_host_address(db, inventory):
    add_device(db, "10.1.2.3", "admin", "pw", KEY)
    sql(db, "UPDATE devices SET ip_address = '10.1.2.3/24'")
    assert inventory.load().devices[0].host == "10.1.2.3"


def host_key_columns(url: str, device_id: str):
    return sql(url, "SELECT ssh_host_key_fingerprint, ssh_host_key_first_seen,"
               " ssh_host_key_last_verified FROM devices WHERE id = %s", device_id)[0]


def test_record_host_key_writes_only_the_host_key_columns(db, inventory):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY, hostname="r1",
                           routeros_version="7.16")
    before = sql(db, "SELECT to_jsonb(d) FROM devices d")[0][0]
    assert inventory.record_host_key(device_id, FP) is True
    after = sql(db, "SELECT to_jsonb(d) FROM devices d")[0][0]
    changed = {k for k in after if after[k] != before[k]}
    assert changed == {"ssh_host_key_fingerprint", "ssh_host_key_first_seen",
                       "ssh_host_key_last_verified"}
    assert inventory.load().devices[0].host_key_fingerprint == FP


def test_record_host_key_never_replaces_a_stored_key(db, inventory):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    assert inventory.record_host_key(device_id, FP) is True
    first_seen = host_key_columns(db, device_id)[1]
    assert inventory.record_host_key(device_id, FP2) is False
    assert host_key_columns(db, device_id)[0] == FP
    assert inventory.record_host_key(device_id, FP) is True  # same key: re-verified
    fp, seen, verified = host_key_columns(db, device_id)
    assert (fp, seen) == (FP, first_seen) and verified >= first_seen


def test_empty_fingerprint_counts_as_unpinned(db, inventory):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY, host_key_fingerprint="")
    assert inventory.load().devices[0].host_key_fingerprint is None
    assert inventory.record_host_key(device_id, FP) is True


def test_mark_verified_and_reset(db, inventory):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    inventory.mark_verified(device_id)  # nothing stored yet: nothing to verify
    assert host_key_columns(db, device_id) == (None, None, None)
    inventory.record_host_key(device_id, FP)
    _, seen, verified = host_key_columns(db, device_id)
    time.sleep(0.01)
    inventory.mark_verified(device_id)
    _, seen2, verified2 = host_key_columns(db, device_id)
    assert seen2 == seen and verified2 > verified
    assert inventory.reset_host_key(device_id) is True
    assert host_key_columns(db, device_id) == (None, None, None)
    assert inventory.reset_host_key(device_id) is False  # nothing stored
    with pytest.raises(UnknownDevice):
        inventory.reset_host_key(str(uuid.uuid4()))
    assert inventory.record_host_key(device_id, FP2) is True


def test_accept_replaces_the_stored_key_and_names_an_unknown_device(db, inventory):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    inventory.record_host_key(device_id, FP)
    inventory.accept_host_key(device_id, FP2)
    fp, seen, verified = host_key_columns(db, device_id)
    assert (fp, verified) == (FP2, None) and seen is not None
    assert inventory.record_host_key(device_id, FP) is False
    with pytest.raises(UnknownDevice):
        inventory.accept_host_key(str(uuid.uuid4()), FP)
    with pytest.raises(UnknownDevice):  # never "a different key is stored"
        inventory.record_host_key(str(uuid.uuid4()), FP)


def test_concurrent_first_uses_store_exactly_one_key(db):
    """Two processes trust a device at once: the conditional UPDATE lets one win."""
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    keys = ["SHA256:" + c * 43 for c in "CDEFGH"]
    inventories = [PostgresInventory(db) for _ in keys]
    with concurrent.futures.ThreadPoolExecutor(len(keys)) as pool:
        won = list(pool.map(lambda pair: pair[0].record_host_key(device_id, pair[1]),
                            zip(inventories, keys, strict=True)))
    for inv in inventories:
        inv.close()
    assert won.count(True) == 1
    assert host_key_columns(db, device_id)[0] == keys[won.index(True)]


def test_reconnects_after_the_server_drops_the_connection(db, inventory):
    add_device(db, "192.0.2.1", "admin", "pw", KEY)
    assert len(inventory.load().devices) == 1
    sql(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE application_name = 'ray-backup' AND pid <> pg_backend_pid()")
    assert len(inventory.load().devices) == 1


def test_unreachable_database_raises_quickly():
    inv = PostgresInventory("postgresql://u:hunter2@127.0.0.1:1/none")
    assert "hunter2" not in repr(inv)
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as exc:
        inv.load()
    assert time.monotonic() - started < 6
    assert "hunter2" not in str(exc.value)


def test_missing_table_raises(pg_url):
    inv = PostgresInventory(pg_url)
    with pytest.raises(psycopg.errors.UndefinedTable):
        inv.load()
    inv.close()


def test_ten_thousand_rows_load_in_one_query(db, inventory):
    # Speed is measured by benchmarks/reconcile.py, never asserted here: a loaded CI machine
    # must not fail a correct load.
    blob = encrypt_credentials(KEY, "admin", "pw")
    new = [NewDevice(host=f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", hostname=f"r{i}",
                     tenant_id=TENANT, port=None if i % 2 else 22, routeros_version="7.16")
           for i in range(10_000)]
    add_devices(db, new, None)
    sql(db, "UPDATE devices SET encrypted_credentials = %s", blob)
    inventory.load()  # connect, warm up
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        loaded = inventory.load()
        timings.append(time.perf_counter() - started)
    assert len(loaded.devices) == 10_000 and not loaded.errors
    print(f"\n10,000-row inventory load: best {min(timings) * 1000:.0f} ms, "
          f"worst {max(timings) * 1000:.0f} ms")


def test_the_optional_legacy_ssh_column_is_read_only_when_present(db):
    device_id = add_device(db, "192.0.2.1", "admin", "pw", KEY)
    without = PostgresInventory(db)
    try:
        assert without.load().devices[0].ssh_legacy_algorithms is False  # no such column
    finally:
        without.close()
    sql(db, "ALTER TABLE devices ADD COLUMN ssh_legacy_algorithms boolean")
    other = add_device(db, "192.0.2.2", "admin", "pw", KEY)
    sql(db, "UPDATE devices SET ssh_legacy_algorithms = true WHERE id = %s", device_id)
    inv = PostgresInventory(db)
    try:
        by_id = {d.id: d.ssh_legacy_algorithms for d in inv.load().devices}
        assert by_id == {device_id: True, other: False}  # NULL is no
        sql(db, "ALTER TABLE devices ALTER COLUMN ssh_legacy_algorithms TYPE text")
        sql(db, "UPDATE devices SET ssh_legacy_algorithms = 'maybe' WHERE id = %s", other)
        loaded = inv.load()
    finally:
        inv.close()
    assert [d.id for d in loaded.devices] == [device_id]
    assert len(loaded.errors) == 1 and "ssh_legacy_algorithms must be true or false" in loaded.errors[0]
