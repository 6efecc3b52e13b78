"""Without Kafka, the backing-up process writes history: a one-shot `ray-backup backup` with
DATABASE_URL stores versions in PostgreSQL and change events in `<output>/changes.jsonl`, and a
backup succeeds only once history has it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ray_backup.history.changes import FileChangeSink
from ray_backup.history.postgres import PostgresHistory
from ray_backup.inventory.schema import init_db
from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml
from ray_backup.sinks.directory import DirectorySink
from ray_backup.sinks.history import HistorySink
from tests.support.history import DEVICE, at, capture_text, snapshot, variants
from tests.support.services import free_port

pytestmark = pytest.mark.timeout(300)


def backup(inventory: Path, out: Path, database_url: str, cwd: Path) -> dict[str, dict]:
    # RAY_ADDRESS=local: a Ray of its own, never one someone else started on this machine.
    env = {**os.environ, "DATABASE_URL": database_url, "RAY_ADDRESS": "local",
           "CONFIG_BACKUP_COMMAND_TIMEOUT": "5", "CONFIG_BACKUP_CONNECT_TIMEOUT": "3"}
    for name in ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "RAY_BACKUP_CONFIG"):
        env.pop(name, None)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ray-backup"), "backup", "--inventory", str(inventory),
         "--output", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=240, cwd=cwd,
    )
    assert done.stdout, done.stderr[-2000:]
    return {r["device_id"]: r for r in map(json.loads, done.stdout.splitlines())}


def test_one_shot_backup_with_a_database_and_no_kafka_writes_history_itself(pg_url, tmp_path):
    init_db(pg_url)
    devices = make_fleet(2, seed=3)
    sim = Simulator(devices).start()
    try:
        inventory = write_inventory_yaml(tmp_path / "devices.yaml", devices)
        out = tmp_path / "backups"
        first = backup(inventory, out, pg_url, tmp_path)
        assert {r["status"] for r in first.values()} == {"success"}, first
        devices[0].mutate()
        again = backup(inventory, out, pg_url, tmp_path)
        assert {r["status"] for r in again.values()} == {"success"}
        # The database unreachable: the snapshot is published, history lacks it: not a success.
        down = f"postgresql://postgres@127.0.0.1:{free_port()}/none"
        failed = backup(inventory, out, down, tmp_path)
    finally:
        sim.stop()
    store = PostgresHistory(pg_url)
    try:
        changed, same = devices
        assert [v.sha256_hash for v in store.versions(changed.id)] == [
            again[changed.id]["sha256_hash"], first[changed.id]["sha256_hash"]]
        assert len(store.versions(same.id)) == 1
    finally:
        store.close()
    events = [json.loads(line) for line in (out / "changes.jsonl").read_text().splitlines()]
    assert [(e["device_id"], e["new_sha256_hash"]) for e in events] == [
        (changed.id, again[changed.id]["sha256_hash"])]
    assert all((r["status"], r["error_kind"]) == ("failed", "publish_failed")
               for r in failed.values()), failed
    assert all("history" in r["error"] for r in failed.values())


def test_the_history_sink_holds_no_idle_database_connection(pg_url, tmp_path):
    """One process per device may each hold a HistorySink: between backups none keeps a
    connection open."""
    init_db(pg_url)
    database = psycopg.conninfo.conninfo_to_dict(pg_url)["dbname"]
    sink = HistorySink(DirectorySink(tmp_path / "out"), PostgresHistory(pg_url),
                       FileChangeSink(tmp_path / "out"))
    texts = variants(capture_text(), 2)

    def connections() -> int:
        with psycopg.connect(pg_url) as conn:
            return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                                "AND pid <> pg_backend_pid()", (database,)).fetchone()[0]

    try:
        for n, text in enumerate(texts):
            sink.publish(snapshot(text, at(n)))
            assert connections() == 0
    finally:
        sink.close()
    store = PostgresHistory(pg_url)
    try:
        assert len(store.versions(DEVICE)) == 2
    finally:
        store.close()
