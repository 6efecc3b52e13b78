"""The long-running job on a small local Ray: PostgreSQL outage, a job restart, and a search
of everything a faulty run leaves behind for device secrets.

One Ray instance for the module (2 CPUs, 100 MB object store); every test stops the job's
actors when it ends. The tests hand secret settings to the actors in the env dict given to
``job.start`` (a test convenience: the Ray here was started before the test set them); the
driver itself keeps them out of that dict (``test_settings_secrets_stay_out_of_ray_state``).
Killed actors, a killed supervisor and a lost node are covered by
``tests/integration/test_actor_system.py`` on a 3-node cluster.
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import ray

from ray_backup import constants as C
from ray_backup import job, oneshot, tables
from ray_backup.credentials.payload import dump_credentials
from ray_backup.inventory.postgres import PostgresInventory
from ray_backup.inventory.schema import NewDevice, add_devices, init_db
from ray_backup.settings import Settings
from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml
from tests.integration.conftest import wait_for
from tests.reliability import harness
from tests.reliability.harness import KEY
from tests.support.services import consume_all, free_port

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def local_ray():
    for attempt in range(2):  # a raylet that is slow to register (loaded CI machine) fails init
        try:
            ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, namespace=C.NAMESPACE,
                     include_dashboard=True, dashboard_port=free_port(),
                     _node_ip_address="127.0.0.1", log_to_driver=True)
            break
        except Exception:
            ray.shutdown()
            if attempt:
                raise
    node = ray._private.worker._global_node
    yield Path(node.get_session_dir_path()), node.address
    job.stop_all(grace_s=5)
    ray.shutdown()


@pytest.fixture
def stop_job_after(local_ray):
    yield
    job.stop_all(grace_s=5)
    assert not device_actors(), "device actors left behind"


@pytest.fixture
def simulator():
    started = []

    def start(n, **kwargs):
        sims = make_fleet(n, seed=uuid.uuid4().int % 10**9, **kwargs)
        started.append(Simulator(sims).start())
        return started[-1]

    yield start
    for sim in started:
        sim.stop()


def env_for(tmp_path: Path, **extra) -> dict[str, str]:
    env = {
        "RAY_BACKUP_OUTPUT_DIR": str(tmp_path / "out"),
        "RAY_BACKUP_SPOOL_DIR": str(tmp_path / "spool"),
        "CONFIG_BACKUP_INTERVAL": "3600",
        "CONFIG_BACKUP_JITTER_MIN": "0",
        "CONFIG_BACKUP_JITTER_MAX": "1",
        "CONFIG_BACKUP_COMMAND_TIMEOUT": "5",
        "CONFIG_BACKUP_CONNECT_TIMEOUT": "3",
        "DEVICE_REFRESH_SECONDS": "1",
        "RAY_BACKUP_METRICS_PORT": "0",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_job(env):
    return job.start(Settings.load(environ=env), env)


def device_actors() -> dict[str, str]:
    """Named device actors → their actor id (changes when an actor is recreated)."""
    out = {}
    for info in ray.util.list_named_actors(all_namespaces=True):
        if info.get("namespace") == C.NAMESPACE and info["name"].startswith(C.DEVICE_ACTOR_PREFIX):
            out[info["name"]] = ray.get_actor(info["name"], namespace=C.NAMESPACE)._actor_id.hex()
    return out


def status(supervisor) -> dict[str, dict]:
    return {row["device_id"]: row for row in ray.get(supervisor.status.remote(), timeout=30)}


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def new_devices(sims) -> list[NewDevice]:
    return [NewDevice(id=s.id, host="127.0.0.1", port=s.port, username=s.username,
                      password=s.password, hostname=s.name, routeros_version=s.routeros_version)
            for s in sims]


# -- PostgreSQL goes away ---------------------------------------------------------------------


def test_postgres_outage_keeps_the_fleet_and_reconcile_resumes(
        stop_job_after, own_postgres, simulator, redis_url, redis_prefix, tmp_path):
    sim = simulator(3)
    url = own_postgres.url
    init_db(url)
    first, second, late = sim.devices
    add_devices(url, new_devices([first, second]), KEY)
    # One actor each (auto would pack the third device into one of the first two): the
    # test tells the actors that kept running from the one added afterwards.
    env = env_for(tmp_path, DATABASE_URL=url, CREDENTIAL_ENCRYPTION_KEY=KEY, REDIS_URL=redis_url,
                  RAY_BACKUP_REDIS_PREFIX=redis_prefix, RAY_BACKUP_DEVICES_PER_ACTOR=1)
    supervisor = start_job(env)
    ids = [first.id, second.id]
    wait_for(lambda: all((status(supervisor).get(i) or {}).get("last_success_at") for i in ids),
             90, "first backups")
    actors = device_actors()
    assert len(actors) == 2

    own_postgres.stop()
    errors_before = metric(ray.get(supervisor.metrics_text.remote()),
                           "ray_backup_reconcile_errors_total")
    wait_for(lambda: metric(ray.get(supervisor.metrics_text.remote()),
                            "ray_backup_reconcile_errors_total") >= errors_before + 2,
             30, "reconciles failing while PostgreSQL is down")
    assert device_actors() == actors  # the same actors, still running
    for device_id in ids:
        # With DATABASE_URL and no Kafka the backing-up process writes history, and a backup
        # succeeds only once history has it: while the database is down it fails, naming why.
        result = ray.get(supervisor.trigger.remote(device_id))
        assert (result["status"], result["error_kind"]) == (C.STATUS_FAILED, "publish_failed")
        assert "history" in result["error"]

    own_postgres.start()
    for device_id in ids:  # and back up again once it returns
        wait_for(lambda d=device_id: ray.get(supervisor.trigger.remote(d))["status"]
                 == C.STATUS_SUCCESS, 60, "a backup after PostgreSQL came back")
    add_devices(url, new_devices([late]), KEY)
    wait_for(lambda: (status(supervisor).get(late.id) or {}).get("last_success_at"), 60,
             "a device added after PostgreSQL came back")
    now = device_actors()
    assert {k: v for k, v in now.items() if k in actors} == actors and len(now) == 3
    stored = {d.id: d.host_key_fingerprint for d in PostgresInventory(url).load().devices}
    assert stored[late.id] == late.host_key_fingerprint  # trusted on first use, written back


# -- the job is stopped and started again ------------------------------------------------------


def test_job_restart_resumes_every_device_with_its_state(
        stop_job_after, simulator, redis_url, redis_prefix, tmp_path):
    sim = simulator(5, faults={"wrong_password": 1, "non_config": 1})
    path = write_inventory_yaml(tmp_path / "fleet.yaml", sim.devices)
    env = env_for(tmp_path, RAY_BACKUP_INVENTORY=path, REDIS_URL=redis_url,
                  RAY_BACKUP_REDIS_PREFIX=redis_prefix, CONFIG_BACKUP_INTERVAL="8")
    kind = {d.id: d.fault or "healthy" for d in sim.devices}
    healthy = [i for i, k in kind.items() if k == "healthy"]
    blocked = next(i for i, k in kind.items() if k == "wrong_password")
    failing = next(i for i, k in kind.items() if k == "non_config")

    supervisor = start_job(env)

    def settled():
        rows = status(supervisor)
        return (all((rows.get(i) or {}).get("last_success_at") for i in healthy)
                and rows.get(blocked, {}).get("status") == C.STATUS_AUTH_BLOCKED
                and rows.get(failing, {}).get("last_error_kind") == "invalid_output" and rows)

    before = wait_for(settled, 90, "first round")
    job.stop_all(grace_s=5)  # what `ray job stop` / SIGTERM on the driver does
    assert not device_actors()
    auth_failures = sim.stats.auth_failures
    failing_exports = sim.device(failing).exports_served
    changed = healthy[0]
    sim.device(changed).mutate()  # changed while the job was down
    restarted_at = time.time()

    supervisor = start_job(env)
    after = wait_for(
        lambda: all(((status(supervisor).get(i) or {}).get("last_success_at") or 0) > restarted_at
                    for i in healthy) and status(supervisor),
        60, "backups after the restart")
    # The first backup after the restart compared against the hash kept in Redis.
    changes = metric(ray.get(supervisor.metrics_text.remote()), "ray_backup_config_changes_total")
    assert changes == 1, "only the device changed while the job was down counts as changed"
    assert after[changed]["sha256_hash"] != before[changed]["sha256_hash"]
    # Blocked stays blocked (no new login), backoff is honoured (no new export).
    time.sleep(2)
    rows = status(supervisor)
    assert rows[blocked]["status"] == C.STATUS_AUTH_BLOCKED
    assert rows[blocked]["consecutive_failures"] == before[blocked]["consecutive_failures"]
    assert sim.stats.auth_failures == auth_failures
    assert sim.device(failing).exports_served == failing_exports
    assert rows[failing]["backoff_until"] == before[failing]["backoff_until"]


# -- a run with faults leaks nothing -----------------------------------------------------------


def state_api(address: str) -> dict[str, str]:
    from ray.util.state import list_actors, list_jobs, list_tasks, list_workers

    def dump(rows):
        return json.dumps([getattr(r, "__dict__", r) for r in rows], default=str)

    return {
        "state API: actors": dump(list_actors(address=address, detail=True, limit=10000)),
        "state API: tasks": dump(list_tasks(address=address, detail=True, limit=10000)),
        "state API: workers": dump(list_workers(address=address, detail=True, limit=10000)),
        "state API: jobs": dump(list_jobs(address=address)),
    }


def test_no_secret_leaks_from_a_faulty_run(stop_job_after, local_ray, simulator, pg_url,
                                          kafka_bootstrap, kafka_topic, redis_url, redis_prefix,
                                          tmp_path, capfd, caplog):
    session_dir, gcs_address = local_ray
    password = f"pw-{uuid.uuid4().hex}"
    sim = simulator(6, password=password, versions=("7.16", "6.49.10"),
                    faults={"wrong_password": 1, "non_config": 1, "disconnect": 1, "garbage": 1})
    init_db(pg_url)
    add_devices(pg_url, new_devices(sim.devices), KEY)
    wrong_type = str(uuid.uuid4())  # a credential document that is a JSON list holding the password
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO devices (id, tenant_id, hostname, ip_address, ssh_port,"
                     " encrypted_credentials) VALUES (%s, %s, 'wrong-type', '127.0.0.1', %s, %s)",
                     (wrong_type, "00000000-0000-0000-0000-000000000000", sim.devices[0].port,
                      seal(json.dumps(["admin", password]).encode())))
    env = env_for(tmp_path, DATABASE_URL=pg_url, CREDENTIAL_ENCRYPTION_KEY=KEY,
                  REDIS_URL=redis_url, RAY_BACKUP_REDIS_PREFIX=redis_prefix,
                  KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_TOPIC=kafka_topic,
                  CONFIG_BACKUP_EXPORT_MODE="show-sensitive", RAY_BACKUP_LOG_LEVEL="DEBUG")
    supervisor = start_job(env)
    ids = [d.id for d in sim.devices] + [wrong_type]
    wait_for(lambda: all((status(supervisor).get(i) or {}).get("last_attempt_at") for i in ids),
             90, "every device tried")
    triggered = [ray.get(supervisor.trigger.remote(i)) for i in ids]
    devices = PostgresInventory(pg_url).load().devices
    one_shot = oneshot.backup_fleet(Settings.load(environ=env), devices, env)
    rows = list(status(supervisor).values())
    tables.print_status(rows)
    print(json.dumps([tables.status_json(r) for r in rows]))
    metrics_text = ray.get(supervisor.metrics_text.remote())
    time.sleep(2)  # let the workers' last log lines reach the files and the driver

    # Not vacuous: the healthy devices' secrets did travel, to the sink.
    events = [json.loads(m.value()) for m in consume_all(kafka_bootstrap, kafka_topic, timeout=20)]
    healthy = [d for d in sim.devices if d.fault is None]
    assert healthy and all(any(d.secret in e["config_text"] for e in events) for d in healthy)
    assert {r["status"] for r in triggered} == {C.STATUS_SUCCESS, C.STATUS_FAILED}
    assert {r["error_kind"] for r in one_shot} >= {None, "auth_failed", "invalid_output",
                                                   "truncated_output", "credentials"}

    out, err = capfd.readouterr()
    haystacks = {
        "driver stdout": out, "driver stderr": err, "driver log records": caplog.text,
        "status table": json.dumps(rows, default=str), "metrics endpoint": metrics_text,
        "trigger results": json.dumps(triggered), "one-shot results": json.dumps(one_shot),
        "actor handles": repr([ray.get_actor(n, namespace=C.NAMESPACE) for n in device_actors()]),
        **state_api(gcs_address),
        **{f"Ray log {p}": text for p, text in harness.read_tree(session_dir / "logs").items()},
    }
    needles = {"SSH password": password,
               "credential plaintext": dump_credentials("admin", password).decode(),
               "credential document": json.dumps(["admin", password])}
    for device in sim.devices:
        needles[f"secret of {device.name}"] = device.secret
        for n, line in enumerate(config_lines(device)):
            needles[f"config line {n} of {device.name}"] = line
    # The search sees what it must: device actors' log lines, in Ray's files and on the driver.
    ray_logs = {k: v for k, v in haystacks.items() if k.startswith("Ray log")}
    for device in sim.devices:
        assert harness.find_leaks(ray_logs, {"id": device.id}), "device actor logs not searched"
    assert sim.devices[0].id in out and "auth_failed" in out
    leaks = harness.find_leaks(haystacks, needles)
    assert not leaks, "\n".join(leaks[:20])


def config_lines(device) -> list[str]:
    """Lines of the device's configuration that only a leak could put anywhere else."""
    return [line for line in device.config_text(sensitive=True).split("\n")
            if len(line) >= 30 and "=" in line and not line.startswith("#")]


def seal(plaintext: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ray_backup.credentials.legacy import load_key

    nonce = os.urandom(12)
    return nonce + AESGCM(load_key(KEY)).encrypt(nonce, plaintext, None)


def test_settings_secrets_stay_out_of_ray_state(stop_job_after, local_ray, simulator, tmp_path,
                                                monkeypatch):
    """The driver's own path (``job.actor_env``): secret settings are not handed to the
    actors' runtime_env, which Ray shows in the dashboard and the state API."""
    _, gcs_address = local_ray
    sim = simulator(1)
    path = write_inventory_yaml(tmp_path / "fleet.yaml", sim.devices)
    db_password = f"db-{uuid.uuid4().hex}"
    key = base64.b64encode(os.urandom(32)).decode()  # this test's own: other tests used KEY
    for name, value in env_for(tmp_path, RAY_BACKUP_INVENTORY=path).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CREDENTIAL_ENCRYPTION_KEY", key)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://rb:{db_password}@127.0.0.1:1/network")
    env = job.actor_env()
    assert "CREDENTIAL_ENCRYPTION_KEY" not in env and "DATABASE_URL" not in env
    supervisor = job.start(Settings.load(), env)
    wait_for(lambda: (status(supervisor).get(sim.devices[0].id) or {}).get("last_success_at"),
             60, "a backup")
    state = state_api(gcs_address)
    # Not vacuous: this job's actors and their forwarded (non-secret) settings are visible.
    assert harness.find_leaks(state, {"inventory path": str(path)})
    leaks = harness.find_leaks(state, {"CREDENTIAL_ENCRYPTION_KEY": key,
                                       "DATABASE_URL password": db_password})
    assert not leaks, "\n".join(leaks)


def test_kafka_outage_during_the_long_running_job(stop_job_after, own_kafka, simulator,
                                                 redis_url, redis_prefix, tmp_path):
    """The broker goes away under the running job; every device's snapshot taken meanwhile
    is kept in the node's spool and reaches the broker after it returns, in order, through
    the actors' background drainers (the devices themselves are backing off by then)."""
    from ray_backup.drivers.base import sha256_hex
    from ray_backup.drivers.routeros import DRIVER
    from ray_backup.sinks.spool import DiskSpool

    sim = simulator(4)
    path = write_inventory_yaml(tmp_path / "fleet.yaml", sim.devices)
    topic = own_kafka.create_topic("config.snapshots", partitions=2)
    env = env_for(tmp_path, RAY_BACKUP_INVENTORY=path, REDIS_URL=redis_url,
                  RAY_BACKUP_REDIS_PREFIX=redis_prefix, KAFKA_BOOTSTRAP_SERVERS=own_kafka.bootstrap,
                  KAFKA_TOPIC=topic, CONFIG_BACKUP_INTERVAL="4")
    supervisor = start_job(env)
    ids = [d.id for d in sim.devices]
    wait_for(lambda: all((status(supervisor).get(i) or {}).get("last_success_at") for i in ids),
             90, "first backups")
    own_kafka.stop()
    wait_for(lambda: all((status(supervisor).get(i) or {}).get("last_error_kind")
                         == "publish_failed" for i in ids), 60, "backups failing to publish")
    spool = DiskSpool(tmp_path / "spool", 1 << 30)
    assert spool.pending() >= len(ids)
    own_kafka.start()  # empty: only what was spooled can arrive now
    wait_for(lambda: spool.pending() == 0, 150, "the spool drained by the actors")
    events = [json.loads(m.value()) for m in consume_all(own_kafka.bootstrap, topic, timeout=20)]
    expected = {d.id: sha256_hex(DRIVER.normalize(d.export_bytes(sensitive=True).decode()))
                for d in sim.devices}
    assert {e["device_id"] for e in events} == set(ids)
    for event in events:
        assert event["sha256_hash"] == expected[event["device_id"]]
    for device_id in ids:
        times = [e["collected_at"] for e in events if e["device_id"] == device_id]
        assert times == sorted(times)
