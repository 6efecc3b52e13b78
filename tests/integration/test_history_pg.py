"""The PostgreSQL history store against a real server: versions, races, retention, at rest,
and a the-other-dude database with row-level security written through its restricted role."""

from __future__ import annotations

import base64
import threading
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from ray_backup.credentials.transit import TransitClient
from ray_backup.history.base import HistoryLookupError, HistoryRejected
from ray_backup.history.postgres import PostgresHistory
from ray_backup.history.sealing import Sealer
from ray_backup.inventory.schema import add_device, init_db
from tests.support.fake_transit import FakeTransit
from tests.support.history import (
    DEVICE,
    TENANT,
    at,
    capture_text,
    insert_after,
    snapshot,
    variants,
)
from tests.support.the_other_dude import create_tod_schema, drop_role

KEY = base64.b64encode(bytes(range(32))).decode()
SECRET = "hunter2-very-secret"
OTHER_TENANT = "44444444-4444-4444-8444-444444444444"


@pytest.fixture
def db(pg_url):
    init_db(pg_url)
    return pg_url


@pytest.fixture
def history(db):
    store = PostgresHistory(db)
    yield store
    store.close()


@pytest.fixture
def base():
    return capture_text()


def rows(url: str, query: str, *params) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchall()


def test_duplicate_delivery_stores_one_version(history, db, base):
    outcomes = [history.store(snapshot(base, at(h))).outcome for h in (0, 0, 1)]
    assert outcomes == ["new", "duplicate", "duplicate"]
    assert rows(db, "SELECT count(*) FROM router_config_snapshots") == [(1,)]
    assert history.versions(DEVICE)[0].lines_added is None


def test_late_delivery_is_stale_and_never_a_reversed_diff(history, db, base):
    a, b = variants(base, 2)
    first = history.store(snapshot(a, at(0)))
    second = history.store(snapshot(b, at(2)))
    assert history.store(snapshot(a, at(1))).outcome == "stale"
    assert rows(db, "SELECT old_snapshot_id::text, new_snapshot_id::text, lines_added, "
                    "lines_removed FROM router_config_diffs") == [
        (first.version.snapshot_id, second.version.snapshot_id, 1, 0)]


def test_flip_back_stores_the_old_configuration_again(history, base):
    a, b = variants(base, 2)
    stored = [history.store(snapshot(text, at(h))) for h, text in enumerate((a, b, a))]
    assert [s.outcome for s in stored] == ["new", "new", "new"]
    change = stored[2].change
    assert (change.old_snapshot_id, change.lines_added, change.lines_removed) == (
        stored[1].version.snapshot_id, 0, 1)
    assert [s.summary for s in change.sections] == ["Removed 1 address-list entry"]
    assert history.text(DEVICE) == a
    assert [v.snapshot_id for v in history.versions(DEVICE)] == [
        s.version.snapshot_id for s in reversed(stored)]


def test_writers_racing_make_exactly_one_version_each(db, base):
    texts = variants(base, 10)
    outcomes: list[str] = []

    def writer():
        store = PostgresHistory(db)
        try:
            outcomes.extend(store.store(snapshot(t, at(i))).outcome for i, t in enumerate(texts))
        finally:
            store.close()

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("new") == 10
    assert rows(db, "SELECT count(*), count(DISTINCT sha256_hash) FROM router_config_snapshots") \
        == [(10, 10)]
    assert rows(db, "SELECT count(*) FROM router_config_diffs") == [(9,)]


def test_retention_keeps_the_newest_two_and_removes_diffs_with_their_versions(history, db, base):
    a, b, c, d = variants(base, 4)
    for hours, text in ((0, a), (1, b), (2, c), (3, d)):
        history.store(snapshot(text, at(hours)))
    lone = "33333333-3333-4333-8333-333333333333"
    history.store(snapshot(a, at(0), device=lone))
    assert history.prune(retention_days=1) == 2
    assert history.text(DEVICE) == d and history.text(lone) == a
    assert [v.lines_added for v in history.versions(DEVICE)] == [1, None]
    assert rows(db, "SELECT count(*) FROM router_config_diffs") == [(1,)]
    assert rows(db, "SELECT count(*) FROM router_config_changes") == [(1,)]
    assert history.prune(retention_days=1) == 0
    history.store(snapshot(b, at(4)))
    assert history.prune(retention_days=100000) == 0  # recent enough: nothing goes
    assert len(history.versions(DEVICE)) == 3


def test_secrets_masked_in_diff_text_and_raw_line(history, db, base):
    old = insert_after(base, "/interface pppoe-client")
    new = old.replace("password=password", f"password={SECRET}")
    history.store(snapshot(old, at(0)))
    stored = history.store(snapshot(new, at(1)))
    diff_text, = rows(db, "SELECT diff_text FROM router_config_diffs")[0]
    raw_lines = [r[0] for r in rows(db, "SELECT raw_line FROM router_config_changes")]
    assert SECRET not in diff_text and "password=***" in diff_text
    assert raw_lines and all(SECRET not in line for line in raw_lines)
    assert SECRET in history.diff(DEVICE, history.versions(DEVICE)[1].snapshot_id,
                                  stored.version.snapshot_id)
    assert "password=***" in history.stored_diff(DEVICE, stored.version.snapshot_id)


def test_config_text_encrypted_with_the_application_key(db, base):
    store = PostgresHistory(db, Sealer(key_b64=KEY))
    try:
        store.store(snapshot(base, at(0)))
        (text,), = rows(db, "SELECT config_text FROM router_config_snapshots")
        assert text.startswith("aes256gcm:v1:") and "/ip address" not in text
        assert store.text(DEVICE) == base
    finally:
        store.close()


def test_config_text_is_transit_ciphertext_under_the_tenant_key(db, base):
    with FakeTransit(token="t0ken") as fake:
        store = PostgresHistory(db, Sealer(TransitClient(fake.addr, "t0ken")))
        try:
            store.store(snapshot(base, at(0)))
            store.store(snapshot(base + "/system identity\nset name=x\n", at(1)))
            texts = [r[0] for r in rows(db, "SELECT config_text FROM router_config_snapshots")]
            assert all(t.startswith("vault:v1:") for t in texts)
            # What the-other-dude's UI does with the row: decrypt with tenant_<id>.
            status, body = fake.decrypt(f"tenant_{TENANT}", texts[0])
            assert status == 200
            assert base64.b64decode(body["data"]["plaintext"]).decode() in (
                base, base + "/system identity\nset name=x\n")
            assert store.text(DEVICE).endswith("set name=x\n")
        finally:
            store.close()


def test_tenant_must_match_the_devices_table(history, db, base):
    device = add_device(db, "192.0.2.10", tenant_id=TENANT)
    with pytest.raises(HistoryRejected, match=device):
        history.store(snapshot(base, at(0), device=device, tenant=OTHER_TENANT))
    assert history.store(snapshot(base, at(0), device=device)).outcome == "new"
    # A device the devices table does not know (a YAML inventory) is accepted.
    assert history.store(snapshot(base, at(0))).outcome == "new"


def test_unknown_device_and_bad_ids_are_clear_errors(history, base):
    with pytest.raises(HistoryLookupError, match="no history"):
        history.text(DEVICE)
    assert history.versions("router-1") == []  # views then look the name up
    with pytest.raises(HistoryLookupError, match="not a UUID"):
        history.text("router-1")
    with pytest.raises(HistoryRejected, match="not a UUID"):
        history.store(snapshot(base, at(0), device="router-1"))


def test_db_init_is_idempotent(db):
    init_db(db)
    names = {r[0] for r in rows(
        db, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'router_config_%%'")}
    assert names == {"router_config_snapshots", "router_config_diffs", "router_config_changes"}


@pytest.fixture
def tod(pg_url):
    """A the-other-dude database (its migrations' tables, RLS, grants) and its app role's URL."""
    role = f"rb_app_{uuid.uuid4().hex[:8]}"
    tenants = create_tod_schema(pg_url, role)
    parts = urlsplit(pg_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    yield pg_url, urlunsplit((parts.scheme, f"{role}@{host}", parts.path, parts.query, "")), tenants
    drop_role(pg_url, role)


def test_the_other_dude_schema_with_row_level_security(tod, base):
    admin_url, app_url, (tenant_a, tenant_b) = tod
    device_a = add_tod_device(admin_url, tenant_a, "a")
    device_b = add_tod_device(admin_url, tenant_b, "b")
    init_db(admin_url)  # must not alter its tables
    assert rows(admin_url, "SELECT indexname FROM pg_indexes WHERE indexname = 'idx_rcd_new_snapshot'") == []
    old, new = variants(base, 2)
    store = PostgresHistory(app_url)
    try:
        for device, tenant in ((device_a, tenant_a), (device_b, tenant_b)):
            store.store(snapshot(old, at(0), device=device, tenant=tenant))
            stored = store.store(snapshot(new, at(1), device=device, tenant=tenant))
            assert stored.outcome == "new" and stored.version.lines_added == 1
        with pytest.raises(HistoryRejected, match=device_a):
            store.store(snapshot(new, at(2), device=device_a, tenant=tenant_b))
        with pytest.raises(HistoryRejected, match="not in the devices table"):
            store.store(snapshot(new, at(2), device=str(uuid.uuid4()), tenant=tenant_a))
        assert [v.sections[0].summary for v in store.versions(device_b)[:1]] == [
            "Added 1 address-list entry"]
        assert store.text(device_a) == new
        assert sorted(d for d, _ in store.latest()) == sorted([device_a, device_b])
        store.store(snapshot(old, at(3), device=device_a, tenant=tenant_a))
        assert store.prune(retention_days=1) == 1
    finally:
        store.close()
    # Each tenant sees only its rows through the app role.
    with psycopg.connect(app_url) as conn:
        conn.execute("SELECT set_config('app.current_tenant', %s, false)", (tenant_a,))
        assert conn.execute("SELECT count(*), min(device_id::text) FROM router_config_snapshots"
                            ).fetchone() == (2, device_a)


def add_tod_device(url: str, tenant: str, name: str) -> str:
    device = str(uuid.uuid4())
    with psycopg.connect(url) as conn:
        conn.execute("INSERT INTO devices (id, tenant_id, hostname, ip_address) VALUES (%s, %s, %s, %s)",
                     (device, tenant, f"router-{name}", "192.0.2.1"))
    return device


def test_database_outage_is_unavailable_then_nothing_lost_or_doubled(own_postgres, base):
    from ray_backup.history.base import HistoryUnavailable

    url = own_postgres.url
    init_db(url)
    a, b = variants(base, 2)
    store = PostgresHistory(url)
    try:
        store.store(snapshot(a, at(0)))
        own_postgres.stop()
        with pytest.raises(HistoryUnavailable, match=DEVICE):
            store.store(snapshot(b, at(1)))
        own_postgres.start()
        # The writer delivers the same snapshot again: stored once, after the first.
        assert store.store(snapshot(b, at(1))).outcome == "new"
        assert store.store(snapshot(b, at(1))).outcome == "duplicate"
        assert [v.lines_added for v in store.versions(DEVICE)] == [1, None]
    finally:
        store.close()


def test_storing_prunes_expired_versions_on_its_own(db, base):
    a, b, c = variants(base, 3)
    old = PostgresHistory(db)
    for hours, text in ((0, a), (1, b)):
        old.store(snapshot(text, at(hours)))
    old.close()
    store = PostgresHistory(db, retention_days=1)
    try:
        store.store(snapshot(c, at(2)))  # a goes; b stays as the base of the latest change
        assert [v.lines_added for v in store.versions(DEVICE)] == [1, None]
        assert store.text(DEVICE) == c
    finally:
        store.close()
