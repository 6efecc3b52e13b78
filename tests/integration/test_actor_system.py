"""The long-running job on a 3-node Ray cluster (one machine) against the simulator and Redis."""

from __future__ import annotations

from collections import Counter

import pytest
import ray
import redis
from ray.cluster_utils import Cluster

from ray_backup import constants as C
from ray_backup import job
from ray_backup.inventory.yamlfile import YamlInventory
from tests.integration.conftest import job_env, settings_from, wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 80 * 1024**2},
    )
    workers = [cluster.add_node(num_cpus=1, object_store_memory=80 * 1024**2) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=C.NAMESPACE)
    yield cluster, workers
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def running_job(cluster, sim_fleet, redis_url, redis_prefix, tmp_path):
    """Start the job over a simulated fleet; stop it and check nothing is left behind."""
    state = {}

    def start(n=6, **env_extra):
        sim, devices, inventory = sim_fleet(n)
        env = job_env(redis_url, redis_prefix, inventory, tmp_path / "out", **env_extra)
        supervisor = job.start(settings_from(env), env)
        state.update(sim=sim, devices=devices, inventory=inventory, env=env, supervisor=supervisor)
        return state

    yield start
    job.stop_all(grace_s=5)
    assert not _named("device:") and not ray.util.list_named_actors(all_namespaces=False)
    if "devices" in state:
        r = redis.Redis.from_url(redis_url)
        locks = [d.id for d in state["devices"] if r.exists(C.DEVICE_LOCK_KEY.format(device_id=d.id))]
        assert locks == [], "a device lock was left behind"


def test_every_node_is_on_loopback(cluster):
    """The tests' Ray stays on 127.0.0.0/8 (tests/conftest.py), never the outward interface."""
    addresses = {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    assert all(a.startswith("127.") for a in addresses), addresses


def _named(prefix):
    return sorted(
        a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == C.NAMESPACE and a["name"].startswith(prefix)
    )


def _try(fn):
    """``fn()``, or None while the actor it calls is restarting."""
    try:
        return fn()
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
        return None


def _status(supervisor):
    """The status table; empty while the supervisor is restarting."""
    try:
        return {row["device_id"]: row for row in ray.get(supervisor.status.remote(), timeout=30)}
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
        return {}


def _all_backed_up(supervisor, ids, since=0.0):
    rows = _status(supervisor)
    return all((rows.get(i, {}).get("last_success_at") or 0) > since for i in ids) and rows


def _node_counts(supervisor):
    return Counter(row.get("node_id") for row in _status(supervisor).values())


def test_one_named_actor_per_device_spread_over_the_nodes(running_job):
    s = running_job(6)
    ids = [d.id for d in s["devices"]]
    wait_for(lambda: _all_backed_up(s["supervisor"], ids), 90, message="first backups")
    assert _named("device:") == sorted(f"device:{i}" for i in ids)
    assert _named(C.SUPERVISOR_NAME) == [C.SUPERVISOR_NAME]
    assert _named(C.SEMAPHORE_NAME) == [C.SEMAPHORE_NAME]
    counts = _node_counts(s["supervisor"])
    assert len(counts) == 3 and max(counts.values()) - min(counts.values()) <= 1, counts
    handle = ray.get_actor(f"device:{ids[0]}", namespace=C.NAMESPACE)
    text = repr(ray.get(handle.ping.remote()))
    assert s["sim"].device(ids[0]).password not in text


def test_added_and_removed_devices_are_picked_up_within_one_refresh(running_job, sim_fleet, tmp_path):
    s = running_job(4)
    ids = [d.id for d in s["devices"]]
    wait_for(lambda: _named("device:") == sorted(f"device:{i}" for i in ids), 60, message="actors")
    _, extra, extra_inventory = sim_fleet(1, inventory="extra.yaml")
    import yaml

    rows = yaml.safe_load(s["inventory"].read_text())["devices"]
    added = yaml.safe_load(extra_inventory.read_text())["devices"]
    s["inventory"].write_text(yaml.safe_dump({"devices": rows[1:] + added}))
    expected = sorted(f"device:{i}" for i in ids[1:] + [extra[0].id])
    # DEVICE_REFRESH_SECONDS is 2: allow one refresh plus actor start-up.
    wait_for(lambda: _named("device:") == expected, 20, message="reconciled actors")
    wait_for(lambda: _all_backed_up(s["supervisor"], [extra[0].id]), 60, message="new device backed up")


def test_manual_trigger_answers_success_locked_and_failed(running_job, redis_url):
    s = running_job(3, CONFIG_BACKUP_JITTER_MIN=3000, CONFIG_BACKUP_JITTER_MAX=3001)
    ids = [d.id for d in s["devices"]]
    wait_for(lambda: len(_named("device:")) == 3, 60, message="actors")
    sup = s["supervisor"]
    ok = ray.get(sup.trigger.remote(ids[0]))
    assert ok["status"] == "success" and len(ok["sha256_hash"]) == 64 and ok["error"] is None
    r = redis.Redis.from_url(redis_url)
    r.set(C.DEVICE_LOCK_KEY.format(device_id=ids[1]), "someone-else", ex=30)
    assert ray.get(sup.trigger.remote(ids[1]))["status"] == "locked"
    r.delete(C.DEVICE_LOCK_KEY.format(device_id=ids[1]))
    s["sim"].device(ids[2]).password = "changed-on-the-device"
    failed = ray.get(sup.trigger.remote(ids[2]))
    assert failed["status"] == "failed" and failed["error_kind"] == "auth_failed"
    unknown = ray.get(sup.trigger.remote("00000000-0000-0000-0000-00000000dead"))
    assert unknown["status"] == "failed" and "unknown device" in unknown["error"]


def test_ssh_limit_is_never_exceeded_and_every_waiter_is_served(running_job):
    s = running_job(6, CONFIG_BACKUP_MAX_CONCURRENT=2, CONFIG_BACKUP_JITTER_MIN=3000,
                    CONFIG_BACKUP_JITTER_MAX=3001)
    for device in s["devices"]:
        device.delay = 0.5
    wait_for(lambda: len(_named("device:")) == 6, 60, message="actors")
    semaphore = ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
    ray.get(semaphore.reset_peak.remote())
    results = ray.get([s["supervisor"].trigger.remote(d.id) for d in s["devices"]])
    assert [r["status"] for r in results] == ["success"] * 6
    stats = ray.get(semaphore.stats.remote())
    assert stats["peak_held"] == 2 and stats["held"] == 0 and stats["waiting"] == 0
    # What the devices saw: never more than two exports at once.
    assert s["sim"].stats.peak_active_commands == 2


def test_killed_actors_and_supervisor_lose_no_device_and_no_state(running_job):
    s = running_job(4)
    ids = [d.id for d in s["devices"]]
    sup = s["supervisor"]
    wait_for(lambda: _all_backed_up(sup, ids), 90, message="first backups")
    before = _status(sup)
    # A device actor dies: Ray restarts it and it resumes from its persisted state.
    ray.kill(ray.get_actor(f"device:{ids[0]}", namespace=C.NAMESPACE), no_restart=False)
    # The supervisor dies: Ray restarts it; it re-adopts the live actors.
    ray.kill(sup, no_restart=False)
    sup = ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
    wait_for(lambda: set(_status(sup)) == set(ids), 60, message="status after restarts")
    assert _named("device:") == sorted(f"device:{i}" for i in ids)  # no duplicates
    after = wait_for(lambda: _status(sup)[ids[0]].get("last_success_at") and _status(sup), 60)
    for i in ids:
        assert after[i]["last_success_at"] == before[i]["last_success_at"]
        assert after[i]["sha256_hash"] == before[i]["sha256_hash"]


def test_host_key_mismatch_blocks_across_restarts_until_the_key_is_reset(running_job):
    s = running_job(2, CONFIG_BACKUP_JITTER_MIN=3000, CONFIG_BACKUP_JITTER_MAX=3001)
    victim = s["devices"][0]
    sup = s["supervisor"]
    wait_for(lambda: len(_named("device:")) == 2, 60, message="actors")
    assert ray.get(sup.trigger.remote(victim.id))["status"] == "success"  # key trusted on first use
    s["sim"].device(victim.id).rotate_host_key()
    result = ray.get(sup.trigger.remote(victim.id))
    assert result["status"] == "failed" and result["error_kind"] == "host_key_mismatch"
    wait_for(lambda: _status(sup)[victim.id]["status"] == C.STATUS_HOSTKEY_BLOCKED, 10)
    ray.kill(ray.get_actor(f"device:{victim.id}", namespace=C.NAMESPACE), no_restart=False)
    handle = ray.get_actor(f"device:{victim.id}", namespace=C.NAMESPACE)
    rows = wait_for(lambda: _try(lambda: ray.get(handle.status.remote(), timeout=30)), 60,
                    message="restarted actor")
    assert rows[0]["status"] == C.STATUS_HOSTKEY_BLOCKED
    assert rows[0]["last_error_kind"] == "host_key_mismatch"
    # The operator resets the stored key: the next reconcile unblocks, TOFU stores the new one.
    assert YamlInventory(s["inventory"]).reset_host_key(victim.id)
    wait_for(lambda: _status(sup)[victim.id]["status"] == C.STATUS_SUCCESS, 30, message="unblocked")
    stored = {d.id: d.host_key_fingerprint for d in YamlInventory(s["inventory"]).load().devices}
    assert stored[victim.id] == s["sim"].device(victim.id).host_key_fingerprint


def _backed_up(running_job, n=6):
    """The job over ``n`` devices, each backed up once: (its state, device ids, supervisor)."""
    s = running_job(n)
    ids = [d.id for d in s["devices"]]
    wait_for(lambda: _all_backed_up(s["supervisor"], ids), 90, message="first backups")
    return s, ids, s["supervisor"]


def test_a_lost_node_moves_its_devices_to_the_survivors(cluster, running_job):
    _, workers = cluster
    _, ids, sup = _backed_up(running_job)
    lost = workers[-1]
    lost_id = lost.node_id
    cluster_obj = cluster[0]
    cluster_obj.remove_node(lost)
    try:
        def rebalanced():
            counts = _node_counts(sup)
            return (lost_id not in counts and len(counts) == 2
                    and max(counts.values()) - min(counts.values()) <= 1 and counts)

        wait_for(rebalanced, 120, interval=2, message="devices moved off the lost node")
        for i in ids:
            ray.get(sup.trigger.remote(i))
        wait_for(lambda: all(r["status"] == "success" for r in _status(sup).values()), 60)
    finally:
        workers[-1] = cluster_obj.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        cluster_obj.wait_for_nodes()


def test_a_node_lost_while_the_inventory_is_unreadable_gets_its_devices_back(cluster, running_job):
    # Reconcile recreates them from the rows it read last (it used to wait for the inventory).
    # The lost node is not the supervisor's: restarted, it would know no rows until the
    # inventory is back (the rows are not kept anywhere else).
    from ray.util.state import list_actors

    cluster_obj, workers = cluster
    s, _, sup = _backed_up(running_job)
    readable = s["inventory"].read_text()
    s["inventory"].write_text("devices: [not yaml\n")
    (sup_info,) = list_actors(filters=[("name", "=", C.SUPERVISOR_NAME), ("state", "=", "ALIVE")])
    index = next(n for n, w in enumerate(workers) if w.node_id != sup_info.node_id)
    lost = workers[index]
    on_lost = [i for i, row in _status(sup).items() if row["node_id"] == lost.node_id]
    assert on_lost
    cluster_obj.remove_node(lost)
    try:
        def recreated():
            counts = _node_counts(sup)
            return lost.node_id not in counts and sum(counts.values()) == 6 and counts

        wait_for(recreated, 120, interval=2, message="devices of the lost node recreated")
        # Their passwords are looked up in the inventory file, and the semaphore may have
        # been on the lost node too: back up once both are back.
        s["inventory"].write_text(readable)
        wait_for(lambda: all(ray.get(sup.trigger.remote(i))["status"] == "success"
                             for i in on_lost), 60, interval=2, message="backups after the loss")
    finally:
        s["inventory"].write_text(readable)
        workers[index] = cluster_obj.add_node(num_cpus=1, object_store_memory=80 * 1024**2)
        cluster_obj.wait_for_nodes()


def test_fleet_stops_itself_when_its_driver_dies_without_stopping_it(running_job, monkeypatch):
    # Outside service mode the driver heartbeats; a driver killed before it could stop the
    # fleet (`ray job stop` escalates to SIGKILL) must not leave device actors behind.
    monkeypatch.setattr(job, "DRIVER_LEASE_S", 3.0)
    s = running_job(2)
    assert _named("device:")
    ray.get(s["supervisor"].start.remote(job.DRIVER_LEASE_S))  # as `run` does outside service mode
    # Ray restarts the supervisor; the driver's next heartbeat carries the lease again.
    ray.kill(s["supervisor"], no_restart=False)
    sup = ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
    wait_for(lambda: _try(lambda: ray.get(sup.heartbeat.remote(job.DRIVER_LEASE_S), timeout=30)
                          is None), 60, message="restarted supervisor answers")
    wait_for(lambda: not _named("device:") and not _named(C.SUPERVISOR_NAME), 60, interval=1,
             message="fleet stopped after the driver's lease ran out")
    assert not _named(C.SEMAPHORE_NAME)


def test_packed_actors_host_several_device_loops_each_with_its_own_state(running_job):
    s = running_job(5, RAY_BACKUP_DEVICES_PER_ACTOR=2)
    ids = [d.id for d in s["devices"]]
    sup = s["supervisor"]
    rows = wait_for(lambda: _all_backed_up(sup, ids), 90, message="first backups")
    groups = _named(C.DEVICE_GROUP_PREFIX)
    assert len(groups) == 3 and not _named(C.DEVICE_ACTOR_PREFIX)
    assert len({rows[i]["sha256_hash"] for i in ids}) == 5  # five devices, five configs
    # One loop of a packed actor fails; its neighbour in the same process does not care.
    victim = s["devices"][0]
    s["sim"].device(victim.id).password = "rotated"
    assert ray.get(sup.trigger.remote(victim.id))["error_kind"] == "auth_failed"
    neighbours = [i for i in ids if rows[i]["actor"] == rows[victim.id]["actor"] and i != victim.id]
    for other in neighbours:
        assert ray.get(sup.trigger.remote(other))["status"] == "success"
    assert _status(sup)[victim.id]["status"] == C.STATUS_AUTH_BLOCKED


def test_auto_packs_beyond_two_actors_per_node_and_each_device_keeps_its_own_loop(
        running_job, redis_url, redis_prefix):
    from ray_backup.actors.placement import MAX_ACTORS_PER_NODE

    s = running_job(9)  # RAY_BACKUP_DEVICES_PER_ACTOR unset: auto; 3 nodes
    ids = [d.id for d in s["devices"]]
    sup = s["supervisor"]
    rows = wait_for(lambda: _all_backed_up(sup, ids), 120, message="first backups")
    actors = {rows[i]["actor"] for i in ids}
    assert len(actors) <= MAX_ACTORS_PER_NODE * 3 < len(ids)  # packed: fewer processes
    assert len({rows[i]["sha256_hash"] for i in ids}) == 9  # nine devices, nine configs
    assert all(rows[i]["next_due"] for i in ids)  # every device has its own timer loop
    stored = redis.Redis.from_url(redis_url).keys(f"{redis_prefix}state:*")
    assert len(stored) == 9  # and its own persisted state


def _job_connections(cluster_obj, port: int) -> dict[str, int]:
    """Established TCP connections to ``port`` from this cluster's worker processes (the
    raylet's children), by node. Processes, not the state API: other clusters run here."""
    import psutil

    by_node: Counter = Counter()
    for node in [cluster_obj.head_node, *cluster_obj.worker_nodes]:
        (raylet,) = node.all_processes["raylet"]
        try:
            workers = psutil.Process(raylet.process.pid).children(recursive=True)
        except psutil.Error:
            continue
        for proc in workers:
            try:
                conns = proc.net_connections(kind="tcp")
            except psutil.Error:
                continue
            by_node[node.node_id] += sum(1 for c in conns if c.raddr and c.raddr.port == port
                                         and c.status == psutil.CONN_ESTABLISHED)
    return by_node


def test_redis_connections_per_node_do_not_grow_with_the_devices(cluster, running_job, redis_url):
    s = running_job(40, CONFIG_BACKUP_MAX_CONCURRENT=10)
    for device in s["devices"]:
        device.delay = 0.5  # sessions stay open while we count
    ids = [d.id for d in s["devices"]]
    port = redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("port", 6379)
    peak: Counter = Counter()

    def all_done():
        for node, count in _job_connections(cluster[0], port).items():
            peak[node] = max(peak[node], count)
        return _all_backed_up(s["supervisor"], ids)

    wait_for(all_done, 180, interval=1, message="40 devices backed up")
    assert peak and max(peak.values()) <= 8, peak


def test_one_shot_backup_goes_through_the_running_jobs_semaphore(running_job):
    from ray_backup import oneshot

    s = running_job(3, CONFIG_BACKUP_MAX_CONCURRENT=1, CONFIG_BACKUP_JITTER_MIN=3000,
                    CONFIG_BACKUP_JITTER_MAX=3001)
    wait_for(lambda: len(_named("device:")) == 3, 60, message="actors")
    semaphore = ray.get_actor(C.SEMAPHORE_NAME, namespace=C.NAMESPACE)
    before = ray.get(semaphore.stats.remote())["granted_total"]
    for device in s["devices"]:
        device.delay = 0.3
    from ray_backup.inventory.yamlfile import YamlInventory as Inventory

    devices = Inventory(s["inventory"]).load().devices
    results = oneshot.backup_fleet(settings_from(s["env"]), devices, s["env"])
    assert sorted(r["status"] for r in results) == ["success"] * 3
    stats = ray.get(semaphore.stats.remote())
    assert stats["granted_total"] - before == 3 and stats["peak_held"] == 1
    assert s["sim"].stats.peak_active_commands == 1


def test_operator_cli_against_a_running_job(cluster, running_job):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    s = running_job(2)
    ids = [d.id for d in s["devices"]]
    wait_for(lambda: _all_backed_up(s["supervisor"], ids), 90, message="first backups")
    cli = str(Path(sys.executable).parent / "ray-backup")
    env = {**os.environ, "RAY_ADDRESS": cluster[0].address}

    def run(*args):
        return subprocess.run([cli, *args], env=env, capture_output=True, text=True, timeout=120)

    table = run("status")
    assert table.returncode == 0 and "fleet status (2 devices)" in table.stdout
    limits = run("limits", "--max-concurrent", "7", "--logins-per-second", "3")
    assert limits.returncode == 0 and json.loads(limits.stdout.splitlines()[-1])["limit"] == 7
    stopped = run("stop")
    assert stopped.returncode == 0 and "2 device actors removed" in stopped.stdout
    assert not _named("device:") and not _named(C.SUPERVISOR_NAME)
    gone = run("status")
    assert gone.returncode == 2 and "no ray-backup job is running" in gone.stderr
