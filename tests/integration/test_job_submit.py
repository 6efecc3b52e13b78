"""`ray job submit` of the job on a local cluster, end to end, including `ray job stop`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import redis

from ray_backup import constants as C
from tests.integration.conftest import wait_for
from tests.support.services import free_port, wait_for_port

pytestmark = pytest.mark.timeout(600)
BIN = Path(sys.executable).parent
# A loopback-only test cluster: no token authentication between its clients and it.
LOCAL = {"RAY_AUTH_MODE": "disabled"}


@pytest.fixture
def head_node():
    """A one-node Ray cluster started with `ray start --head --block`, stopped after."""
    temp_dir = tempfile.mkdtemp(prefix="rbj", dir="/tmp")
    gcs_port, dash_port = free_port(), free_port()
    # Ray's default agent, client and metrics ports are fixed numbers: another Ray on this
    # machine would hold them and leave this head without a job agent.
    own_ports = [
        f"--{name}={free_port()}"
        for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")
    ]
    env = {**os.environ, **LOCAL, "PATH": f"{BIN}:{os.environ['PATH']}",
           "RAY_JOB_STOP_WAIT_TIME_S": "20"}
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}",
         f"--dashboard-port={dash_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         "--num-cpus=2", f"--object-store-memory={100 * 1024**2}", f"--temp-dir={temp_dir}",
         "--disable-usage-stats", *own_ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", dash_port, timeout=90)
        yield {"gcs": f"127.0.0.1:{gcs_port}", "dashboard": f"http://127.0.0.1:{dash_port}"}
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()


def _ray(*args, env=None, timeout=120):
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _job_logs(job_id, env):
    result = _ray("job", "logs", job_id, env=env)
    return result.stdout + result.stderr  # the CLI prints the driver's log through its logger


def _cli(*args, address):
    env = {**os.environ, **LOCAL, "RAY_ADDRESS": address}
    out = subprocess.run([str(BIN / "ray-backup"), *args], env=env, capture_output=True, text=True,
                         timeout=120)
    return out


def test_submit_watch_trigger_and_stop(head_node, sim_fleet, redis_url, redis_prefix, tmp_path,
                                      monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", LOCAL["RAY_AUTH_MODE"])
    sim, devices, inventory = sim_fleet(3)
    work = tmp_path / "job"
    work.mkdir()
    (work / "devices.yaml").write_text(inventory.read_text())  # only for the refused submission
    out = tmp_path / "backups"
    runtime_env = {"env_vars": {
        "REDIS_URL": redis_url, "RAY_BACKUP_REDIS_PREFIX": redis_prefix,
        "CONFIG_BACKUP_JITTER_MIN": "0", "CONFIG_BACKUP_JITTER_MAX": "1",
        "CONFIG_BACKUP_COMMAND_TIMEOUT": "5", "DEVICE_REFRESH_SECONDS": "2",
        "RAY_BACKUP_METRICS_PORT": "0",
    }}
    env = {**os.environ, **LOCAL, "RAY_ADDRESS": head_node["dashboard"]}

    def submit():
        # The dashboard answers before its job agent is up ("No available agent"): retry.
        result = _ray(
            "job", "submit", "--no-wait", "--working-dir", str(work),
            "--runtime-env-json", json.dumps(runtime_env), "--",
            "ray-backup", "run", "--inventory", str(inventory), "--output", str(out),
            "--status-every", "5", env=env,
        )
        errors.append(result.stderr[-500:])
        return result if result.returncode == 0 else None

    errors: list[str] = []
    try:
        submitted = wait_for(submit, 120, interval=3, message="job submitted")
    except AssertionError:
        raise AssertionError(f"job not submitted: {errors[-1] if errors else ''}") from None
    job_id = re.search(r"raysubmit_[A-Za-z0-9]+", submitted.stdout).group(0)

    def statuses():
        result = _cli("status", "--json", address=head_node["gcs"])
        if result.returncode != 0:
            return None
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        return rows if rows and all(r["status"] == "success" for r in rows) else None

    rows = wait_for(statuses, 120, interval=2, message="every device backed up")
    assert {r["device_id"] for r in rows} == {d.id for d in devices}
    assert len(list((out).glob("*.rsc"))) == 3

    triggered = _cli("trigger", devices[0].id, "--json", address=head_node["gcs"])
    assert triggered.returncode == 0, triggered.stderr
    assert json.loads(triggered.stdout)["status"] == "success"

    # REDIS_URL came only through the job's runtime_env: the actors persisted state with it.
    r = redis.Redis.from_url(redis_url)
    assert all(r.exists(f"{redis_prefix}state:{d.id}") for d in devices)

    logs = _job_logs(job_id, env)
    assert "job running: 3 devices in 3 actors" in logs

    # A relative path resolves inside Ray's copy of the working dir, which goes with the job.
    refused = _ray("job", "submit", "--working-dir", str(work), "--",
                   "ray-backup", "run", "--inventory", "devices.yaml", "--output", str(out), env=env)
    assert refused.returncode != 0
    assert "--inventory 'devices.yaml' is inside the Ray job's working-dir copy" in (
        refused.stdout + refused.stderr)

    stopped = _ray("job", "stop", job_id, env=env)
    assert stopped.returncode == 0, stopped.stderr
    def job_status():
        result = _ray("job", "status", job_id, env=env)
        return result.stdout + result.stderr

    wait_for(lambda: "was stopped" in job_status(), 60, message="job stopped")

    def no_actors_left():
        from ray.util.state import list_actors

        alive = list_actors(address=head_node["dashboard"], filters=[("state", "=", "ALIVE")],
                            raise_on_missing_output=False)
        return not [a.name for a in alive if a.ray_namespace == C.NAMESPACE]

    wait_for(no_actors_left, 60, interval=2, message="actors removed")
    assert not [d.id for d in devices if r.exists(C.DEVICE_LOCK_KEY.format(device_id=d.id))]
    assert "stopped 3 device actors" in _job_logs(job_id, env)
