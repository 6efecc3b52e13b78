"""Who writes history, as the job runs it (issue 10's table), on a local Ray over the simulator."""

from __future__ import annotations

import json
import os
import uuid

import pytest
import ray

from ray_backup import constants as C
from ray_backup import job
from ray_backup.history import open_history
from ray_backup.history import writers as history_writers
from ray_backup.settings import Settings
from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml
from tests.integration.conftest import own_local_ray, wait_for
from tests.support.services import consume_all

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def local_ray():
    with own_local_ray("rbh"):
        yield


@pytest.fixture
def fleet(tmp_path):
    devices = make_fleet(2, seed=7)
    sim = Simulator(devices).start()
    try:
        yield devices, write_inventory_yaml(tmp_path / "devices.yaml", devices)
    finally:
        sim.stop()


def job_env(inventory, output, **extra) -> dict[str, str]:
    env = {
        "RAY_BACKUP_INVENTORY": str(inventory), "RAY_BACKUP_OUTPUT_DIR": str(output),
        "CONFIG_BACKUP_INTERVAL": "3600", "CONFIG_BACKUP_JITTER_MIN": "0",
        "CONFIG_BACKUP_JITTER_MAX": "1", "CONFIG_BACKUP_COMMAND_TIMEOUT": "5",
        "DEVICE_REFRESH_SECONDS": "2", "RAY_BACKUP_METRICS_PORT": "0",
        "RAY_BACKUP_DEVICES_PER_ACTOR": "2", "RAY_BACKUP_SPOOL_DIR": str(output) + "-spool",
        "REDIS_URL": "", "KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "", "RAY_BACKUP_CONFIG": "",
    }
    env.update(extra)
    return env


def samples(text: str) -> dict[str, float]:
    return {line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def test_with_kafka_and_no_database_one_writer_on_the_head_node_writes_the_directory(
        local_ray, fleet, kafka_bootstrap, make_topic, tmp_path):
    devices, inventory = fleet
    out = tmp_path / "out"
    env = job_env(inventory, out, KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
                  KAFKA_TOPIC=make_topic(2), RAY_BACKUP_CHANGES_TOPIC=make_topic(1),
                  RAY_BACKUP_HISTORY_GROUP=f"rb_test_{uuid.uuid4().hex[:8]}")
    settings = Settings.load(environ={**os.environ, **env})
    supervisor = job.start(settings, env)
    try:
        assert [name for name, _ in history_writers.running()] == [f"{C.HISTORY_WRITER_PREFIX}0"]
        store = open_history(settings)
        wait_for(lambda: all(store.versions(d.id) for d in devices), 60, "a first version each")
        changed = devices[0]
        changed.mutate()
        assert ray.get(supervisor.trigger.remote(changed.id))["status"] == "success"
        wait_for(lambda: len(store.versions(changed.id)) == 2, 30, "the change in history")
        events = consume_all(kafka_bootstrap, settings.changes_topic, expected=1)
        assert [m.key().decode() for m in events] == [changed.id]
        event = json.loads(events[0].value())
        assert event["new_sha256_hash"] == store.versions(changed.id)[0].sha256_hash
        assert "config_text" not in event and "changed-1" not in events[0].value().decode()

        def scraped():
            s = samples(ray.get(supervisor.metrics_text.remote()))
            return s if s.get("ray_backup_config_changes_total") == 1 else None

        s = wait_for(scraped, 20, "the writer's change event counted on the scrape page")
        assert s[C.METRIC_HISTORY_WRITER_LAG] == 0
        assert s["ray_backup_history_poison_total"] == 0
        assert s["ray_backup_history_rejected_total"] == 0
    finally:
        job.stop_all(grace_s=2)
    assert history_writers.running() == []


def test_a_start_with_fewer_writers_stops_the_surplus_ones(local_ray, pg_url, kafka_bootstrap,
                                                            make_topic, tmp_path):
    from ray_backup.inventory.schema import init_db

    init_db(pg_url)
    env = job_env(tmp_path / "devices.yaml", tmp_path / "out", DATABASE_URL=pg_url,
                  KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_TOPIC=make_topic(2),
                  RAY_BACKUP_CHANGES_TOPIC=make_topic(1),
                  RAY_BACKUP_HISTORY_GROUP=f"rb_test_{uuid.uuid4().hex[:8]}")

    def start(count: int) -> list[str]:
        wanted = {**env, "RAY_BACKUP_HISTORY_WRITERS": str(count)}
        history_writers.start(Settings.load(environ={**os.environ, **wanted}), wanted)
        return sorted(name for name, _ in history_writers.running())

    try:
        assert start(3) == [f"{C.HISTORY_WRITER_PREFIX}{n}" for n in range(3)]
        # The operator lowers RAY_BACKUP_HISTORY_WRITERS and submits again.
        assert start(1) == [f"{C.HISTORY_WRITER_PREFIX}0"]
        # Kafka gone from the settings: the backing-up processes write history, no writer.
        assert start_without_kafka(env) == []
    finally:
        history_writers.stop(grace_s=2)
        for _, handle in history_writers.running():
            ray.kill(handle, no_restart=True)


def start_without_kafka(env: dict[str, str]) -> list[str]:
    plain = {**env, "KAFKA_BOOTSTRAP_SERVERS": ""}
    history_writers.start(Settings.load(environ={**os.environ, **plain}), plain)
    return sorted(name for name, _ in history_writers.running())
