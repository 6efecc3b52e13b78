"""The supervisor's scrape endpoint and Ray's metrics export, on a small job over the simulator."""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request

import pytest
import ray
from prometheus_client.parser import text_string_to_metric_families

from ray_backup import constants as C
from ray_backup import job
from ray_backup.metrics import DOCUMENTED_METRICS, FleetMetrics, fleet_gauges
from ray_backup.settings import Settings
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(240)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a Prometheus text page."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name, **labels):
    """One sample's value; labels not given are ignored only when the sample has none."""
    return samples.get((name, tuple(sorted(labels.items()))))


def ray_sample(samples, name, **labels):
    """A sample from Ray's export, whose series carry extra labels (node, worker, …)."""
    found = [v for (n, lbls), v in samples.items()
             if n == name and all((k, v) in lbls for k, v in labels.items())]
    return max(found) if found else None


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """A local Ray, three simulated devices (one with a wrong password), the job over them."""
    from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml

    tmp = tmp_path_factory.mktemp("metrics")
    fleet = make_fleet(3, seed=11, faults={"wrong_password": 1})
    sim = Simulator(fleet).start()
    inventory = write_inventory_yaml(tmp / "devices.yaml", fleet)
    env = {
        "RAY_BACKUP_INVENTORY": str(inventory), "RAY_BACKUP_OUTPUT_DIR": str(tmp / "out"),
        "CONFIG_BACKUP_INTERVAL": "3600", "CONFIG_BACKUP_JITTER_MIN": "0",
        "CONFIG_BACKUP_JITTER_MAX": "1", "CONFIG_BACKUP_COMMAND_TIMEOUT": "5",
        "DEVICE_REFRESH_SECONDS": "2", "RAY_BACKUP_METRICS_PORT": "0",
        "REDIS_URL": "", "KAFKA_BOOTSTRAP_SERVERS": "", "DATABASE_URL": "", "RAY_BACKUP_CONFIG": "",
    }
    assert not ray.is_initialized()
    ray_tmp = tempfile.mkdtemp(prefix="rbm")  # short: unix socket paths live under it
    # A Ray of its own (address="local"), even where another one runs on this machine.
    ray.init(address="local", namespace=C.NAMESPACE, num_cpus=2, include_dashboard=False,
             object_store_memory=100 * 1024**2, _temp_dir=ray_tmp,
             _system_config={"metrics_report_interval_ms": 1000})
    try:
        supervisor = job.start(Settings.load(environ={**os.environ, **env}), env)
        yield {"sim": sim, "fleet": fleet, "supervisor": supervisor}
    finally:
        job.stop_all(grace_s=2)
        ray.shutdown()
        sim.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def after_backups(running):
    """The endpoint's samples once every device was tried and one change was backed up."""
    supervisor, fleet = running["supervisor"], running["fleet"]

    def all_tried():
        rows = ray.get(supervisor.status.remote())
        return len(rows) == 3 and all(r["last_attempt_at"] for r in rows)

    wait_for(all_tried, 60, message="a first backup of every device")
    healthy = next(d for d in fleet if d.fault is None)
    healthy.mutate()
    assert ray.get(supervisor.trigger.remote(healthy.id))["status"] == "success"
    address = ray.get(supervisor.metrics_address.remote())
    assert address, "the supervisor serves no metrics endpoint"
    running["url"] = f"http://{address}/metrics"

    def settled():
        # The semaphore's gauges come from its stats as of the last reconcile (every 2 s
        # here), which may have caught a backup in flight.
        samples = scrape(running["url"])
        return samples if value(samples, "mikrotik_config_backup_active") == 0 else None

    return wait_for(settled, 15, message="no backup in flight")


def test_every_documented_series_is_served(after_backups):
    names = {name for name, _ in after_backups}
    for metric in DOCUMENTED_METRICS:
        assert {metric, f"{metric}_count"} & names, f"{metric} missing from the scrape page"


def test_backup_counts_and_duration_follow_the_backups(after_backups):
    s = after_backups
    # Two healthy devices once each, one of them again after its change; one auth failure.
    assert value(s, "mikrotik_config_backup_total", status="success") == 3
    assert value(s, "mikrotik_config_backup_total", status="error") == 1
    assert value(s, "mikrotik_config_backup_total", status="skipped_backoff") == 0
    assert value(s, "mikrotik_config_backup_duration_seconds_count") == 4
    assert value(s, "mikrotik_config_backup_duration_seconds_sum") > 0
    assert value(s, "ray_backup_config_changes_total") == 1


def test_fleet_gauges_describe_the_status_table(after_backups):
    s = after_backups
    assert value(s, "ray_backup_devices", status="success") == 2
    assert value(s, "ray_backup_devices", status="auth_blocked") == 1
    assert value(s, "ray_backup_devices", status="failed") == 0
    assert value(s, "ray_backup_devices_blocked") == 1
    assert 0 <= value(s, "ray_backup_last_success_age_seconds") < 120
    assert value(s, "mikrotik_config_backup_active") == 0
    assert value(s, "ray_backup_semaphore_waiters") == 0
    assert value(s, "ray_backup_reconcile_duration_seconds_count") >= 1
    assert value(s, "ray_backup_reconcile_errors_total") == 0


def test_the_same_series_reach_rays_metrics_export(running, after_backups):
    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"

    def exported():
        s = scrape(url)
        wanted = (ray_sample(s, "ray_mikrotik_config_backup_total", status="success"),
                  ray_sample(s, "ray_ray_backup_devices", status="success"),
                  ray_sample(s, "ray_ray_backup_devices_blocked"),
                  ray_sample(s, "ray_mikrotik_config_backup_duration_seconds_count"))
        return wanted if wanted == (3, 2, 1, 4) else None

    # Ray reports every second here (metrics_report_interval_ms) and the gauges are copied every 5 s.
    wait_for(exported, 45, interval=1, message="the fleet metrics in Ray's export")


# -- FleetMetrics without Ray ---------------------------------------------------------------


def test_gauges_are_computed_from_rows_and_semaphore_stats():
    now = 1_000_000.0
    rows = [{"status": "success", "last_success_at": now - 30},
            {"status": "success", "last_success_at": now - 300},
            {"status": "hostkey_blocked", "last_success_at": None},
            {"status": "some_new_status"}]
    g = fleet_gauges(rows, {"held": 2, "waiting": 5}, now)
    assert g.devices["success"] == 2 and g.devices["hostkey_blocked"] == 1
    assert g.devices["some_new_status"] == 1 and g.devices["pending"] == 0
    assert (g.blocked, g.last_success_age, g.active, g.waiters) == (1, 300, 2, 5)


def test_observe_counts_outcomes_durations_and_changes_only_for_results():
    m = FleetMetrics(list, dict, export_to_ray=False)
    m.observe({"status": "success"})  # a status row with no result: nothing to count
    m.observe({"result_status": C.STATUS_SUCCESS, "duration_s": 1.5, "changed": True})
    m.observe({"result_status": C.STATUS_LOCKED, "duration_s": 0.0})
    m.observe({"result_status": C.STATUS_HOSTKEY_BLOCKED})
    text = m.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert value(samples, "mikrotik_config_backup_total", status="success") == 1
    assert value(samples, "mikrotik_config_backup_total", status="skipped") == 1
    assert value(samples, "mikrotik_config_backup_total", status="skipped_hostkey_blocked") == 1
    assert value(samples, "mikrotik_config_backup_duration_seconds_count") == 1
    assert value(samples, "ray_backup_config_changes_total") == 1
