"""`ray-backup history | diff | show | search` on a directory, after real backups of a simulated fleet.

Three `ray-backup backup` runs (real SSH to the simulator, a local Ray each) of three
devices: nothing changes between the first two but the export's date header, then two
devices get the same new address. Every view is then run as an operator runs it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ray_backup.simulator import Simulator, make_fleet, secret_marker, write_inventory_yaml

pytestmark = pytest.mark.timeout(600)  # the first test waits for three backups, each a local Ray

BIN = Path(sys.executable).parent
NEW_LINE = "add address=172.16.0.1/32 comment=changed-1 interface=ether1 network=172.16.0.1"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "RAY_BACKUP_CONFIG",
                        "RAY_BACKUP_INVENTORY", "CREDENTIAL_ENCRYPTION_KEY", "OPENBAO_ADDR",
                        "OPENBAO_TOKEN", "NO_COLOR")}
    return {**env, "RAY_ADDRESS": "local", "CONFIG_BACKUP_COMMAND_TIMEOUT": "60",
            "CONFIG_BACKUP_CONNECT_TIMEOUT": "30"}  # a loaded CI machine: slow, not failed


def ray_backup(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray-backup"), *args], env={**cli_env(), **env},
                          capture_output=True, text=True, timeout=240, cwd=cwd)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Three backups of three devices; two of them changed before the third."""
    work = tmp_path_factory.mktemp("history-cli")
    devices = make_fleet(3, seed=31, versions=("7.16", "6.49.10"))
    sim = Simulator(devices).start()
    try:
        inventory = write_inventory_yaml(work / "devices.yaml", devices)
        out = work / "backups"
        for run in range(3):
            if run == 2:
                devices[0].mutate()
                devices[1].mutate()
            done = ray_backup("backup", "--inventory", str(inventory), "--output", str(out), "--json")
            assert done.returncode == 0, done.stderr[-2000:]
        yield devices, inventory, out
    finally:
        sim.stop()


def history(out: Path, device: str, *more: str) -> list[dict]:
    done = ray_backup("history", device, "--output", str(out), "--json", *more)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_three_backups_with_one_real_change_give_two_versions(fleet):
    devices, _, out = fleet
    newest, first = history(out, devices[0].id)
    assert set(newest) >= {"snapshot_id", "collected_at", "sha256_hash", "lines_added",
                           "lines_removed", "sections"}
    assert (first["lines_added"], first["lines_removed"], first["sections"]) == (None, None, [])
    assert (newest["lines_added"], newest["lines_removed"]) == (1, 0)
    assert [s["component"] for s in newest["sections"]] == ["ip/address"]
    assert newest["collected_at"] > first["collected_at"]


def test_a_date_header_only_difference_gives_no_new_version(fleet):
    devices, _, out = fleet
    assert len(history(out, devices[2].id)) == 1  # three backups, three export dates, one version


def test_history_table_and_hostnames_through_the_inventory(fleet):
    devices, inventory, out = fleet
    done = ray_backup("history", devices[0].name, "--output", str(out), "--inventory", str(inventory))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{devices[0].name} ({devices[0].id}): 2 versions, newest first"
    assert "ip/address: " in lines[2] and lines[3].endswith("first version")
    unknown = ray_backup("history", "no-such-router", "--output", str(out), "--inventory", str(inventory))
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1, unknown.stderr
    assert "no-such-router" in unknown.stderr
    by_name_without_inventory = ray_backup("history", devices[0].name, "--output", str(out))
    assert by_name_without_inventory.returncode == 2


def test_diff_shows_the_changed_line_by_default_and_by_prefixes(fleet):
    devices, _, out = fleet
    done = ray_backup("diff", devices[0].id, "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert f"+{NEW_LINE}" in done.stdout.splitlines() and "\033[" not in done.stdout
    newest, first = history(out, devices[0].id)
    again = ray_backup("diff", devices[0].id, first["snapshot_id"][:8], newest["snapshot_id"][:10],
                       "--output", str(out), "--color", "always")
    assert again.returncode == 0, again.stderr
    assert f"\033[32m+{NEW_LINE}\033[m" in again.stdout
    only_one = ray_backup("diff", devices[2].id, "--output", str(out))
    assert only_one.returncode == 1 and "first version" in only_one.stderr
    too_short = ray_backup("diff", devices[0].id, first["snapshot_id"][:7], "--output", str(out))
    assert too_short.returncode == 2 and len(too_short.stderr.splitlines()) == 1, too_short.stderr


def test_search_finds_the_line_on_every_device_that_has_it(fleet):
    devices, _, out = fleet
    done = ray_backup("search", r"comment=changed-1\b", "--output", str(out), "--json")
    assert done.returncode == 0, done.stderr
    hits = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(h["device_id"] for h in hits) == sorted(d.id for d in devices[:2])
    assert {(h["section"], h["line"]) for h in hits} == {("/ip address", NEW_LINE)}
    none = ray_backup("search", "comment=changed-99", "--output", str(out))
    assert none.returncode == 1 and none.stdout == ""


def test_secrets_are_masked_in_every_view_unless_asked(fleet):
    devices, _, out = fleet
    marker = secret_marker(devices[0].id)
    shown = ray_backup("show", devices[0].id, "--output", str(out))
    assert shown.returncode == 0, shown.stderr
    assert "/ip address" in shown.stdout and marker not in shown.stdout
    assert f"password={'*' * 3}" in shown.stdout
    found = ray_backup("search", "SIMSECRET", "--output", str(out))
    assert found.returncode == 1 and "SIMSECRET" not in found.stdout
    revealed = ray_backup("show", devices[0].id, "--output", str(out), "--show-secrets")
    assert marker in revealed.stdout
    everywhere = ray_backup("search", "SIMSECRET", "--output", str(out), "--show-secrets", "--json")
    assert {json.loads(line)["device_id"] for line in everywhere.stdout.splitlines()} == {
        d.id for d in devices}


def test_show_takes_a_snapshot_prefix(fleet):
    devices, _, out = fleet
    newest, first = history(out, devices[0].id)
    old = ray_backup("show", devices[0].id, first["snapshot_id"][:8], "--output", str(out))
    new = ray_backup("show", devices[0].id, "--output", str(out))
    assert NEW_LINE not in old.stdout and NEW_LINE in new.stdout


def test_an_empty_directory_has_no_device_and_no_match(tmp_path):
    empty = ray_backup("history", "a1b2c3d4-0000-4000-8000-000000000001", "--output", str(tmp_path))
    assert empty.returncode == 2 and len(empty.stderr.splitlines()) == 1  # no such device there
    nothing = ray_backup("search", "anything", "--output", str(tmp_path))
    assert nothing.returncode == 1


def test_the_views_never_import_ray(fleet):
    devices, _, out = fleet
    views = [["history", devices[0].id], ["diff", devices[0].id], ["show", devices[0].id],
             ["search", "address"]]
    probe = ("import contextlib, io, sys\nfrom ray_backup.cli import main\n"
             f"for argv in {views!r}:\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             f"        assert main([*argv, '--output', {str(out)!r}]) == 0, argv\n"
             "assert 'ray' not in sys.modules, 'ray was imported'\n")
    done = subprocess.run([sys.executable, "-c", probe], env=cli_env(), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- PostgreSQL mode: DATABASE_URL set, no --output ----------------------------------------

KEY = base64.b64encode(bytes(range(32))).decode()
TENANT = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def pg_history(pg_url, tmp_path):
    """Two devices in the devices table; one with two versions, both with a secret; AES at rest."""
    from ray_backup.history.postgres import PostgresHistory
    from ray_backup.history.sealing import Sealer
    from ray_backup.inventory.schema import add_device, init_db
    from tests.support.history import at, capture_text, insert_after, snapshot

    init_db(pg_url)
    ids = [add_device(pg_url, "127.0.0.1", "admin", "pw", KEY, tenant_id=TENANT, hostname=name)
           for name in ("core-pg", "edge-pg")]
    base = insert_after(capture_text(), "/ip address", "add address=10.7.7.7/24 comment=pw password=hunter22")
    changed = insert_after(base, "/ip address", "add address=10.9.9.9/24 interface=bridge")
    store = PostgresHistory(pg_url, Sealer(key_b64=KEY))
    try:
        store.store(snapshot(base, at(0), device=ids[0], tenant=TENANT))
        store.store(snapshot(changed, at(1), device=ids[0], tenant=TENANT))
        store.store(snapshot(changed, at(0), device=ids[1], tenant=TENANT))
    finally:
        store.close()
    env = {"DATABASE_URL": pg_url, "CREDENTIAL_ENCRYPTION_KEY": KEY}
    return ids, env, tmp_path


def test_views_read_postgresql_when_database_url_is_set(pg_history, pg_url):
    ids, env, cwd = pg_history
    done = ray_backup("history", "core-pg", "--json", cwd=cwd, **env)  # hostname: the devices table
    assert done.returncode == 0, done.stderr
    newest, first = map(json.loads, done.stdout.splitlines())
    assert (newest["lines_added"], first["lines_added"]) == (1, None)
    diff = ray_backup("diff", "core-pg", cwd=cwd, **env)
    assert "+add address=10.9.9.9/24 interface=bridge" in diff.stdout.splitlines(), diff.stderr
    found = ray_backup("search", r"10\.9\.9\.9/", "--json", cwd=cwd, **env)
    assert sorted(json.loads(h)["hostname"] for h in found.stdout.splitlines()) == ["core-pg", "edge-pg"]
    shown = ray_backup("show", ids[1], cwd=cwd, **env)
    assert "password=***" in shown.stdout and "hunter22" not in shown.stdout
    assert "hunter22" in ray_backup("show", ids[1], "--show-secrets", cwd=cwd, **env).stdout
    with psycopg.connect(pg_url) as conn:  # and at rest it is not plaintext
        texts = [r[0] for r in conn.execute("SELECT config_text FROM router_config_snapshots")]
    assert len(texts) == 3 and not any("hunter22" in t or "/ip address" in t for t in texts)


def test_an_unreachable_database_is_one_line_not_a_traceback(tmp_path):
    down = "postgresql://postgres@127.0.0.1:1/nothing"
    done = ray_backup("history", "a1b2c3d4-0000-4000-8000-000000000001", cwd=tmp_path,
                      DATABASE_URL=down)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "unavailable" in done.stderr
