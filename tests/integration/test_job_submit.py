"""`ray job submit` of the job on a local cluster with Ray's token authentication, end to end.

The head is `ray start --head` with Ray's default authentication (a token exists, so Ray >=
2.59 turns token auth on); the job is submitted as the README's recipe says, watched and
steered with `ray-backup`, and stopped with `ray job stop`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from ray_backup import constants as C
from tests.integration.conftest import wait_for
from tests.support.ray_head import token_auth_head

pytestmark = pytest.mark.timeout(600)
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
def head_node():
    with token_auth_head(num_cpus=2, RAY_JOB_STOP_WAIT_TIME_S="20") as head:
        yield head


def test_the_readme_recipe_is_the_one_this_test_runs():
    text = README.read_text()
    assert "export RAY_AUTH_MODE=token" in text
    assert "ray job submit --working-dir . -- ray-backup run --inventory /" in text


def test_the_head_refuses_clients_without_its_token(head_node):
    # Ray's default for `ray start --head` with a token present is token authentication.
    refused = head_node.ray("job", "list", env=head_node.env(RAY_AUTH_MODE="disabled"))
    assert refused.returncode != 0 and "Unauthorized" in refused.stderr


def test_a_wrong_token_is_one_clear_error_line(head_node):
    result = head_node.cli("status", env=head_node.env(head_node.gcs, RAY_AUTH_TOKEN="not-the-token"))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "RAY_AUTH_MODE=token" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "not-the-token" not in result.stderr


def test_submit_watch_trigger_and_stop(head_node, sim_fleet, redis_url, redis_prefix, tmp_path):
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

    def submit():
        # The README's recipe (RAY_AUTH_MODE=token, RAY_ADDRESS the dashboard, from the
        # directory to ship, an absolute inventory path), plus this test's settings.
        # The dashboard answers before its job agent is up ("No available agent"): retry.
        result = head_node.ray(
            "job", "submit", "--no-wait", "--working-dir", ".",
            "--runtime-env-json", json.dumps(runtime_env), "--",
            "ray-backup", "run", "--inventory", str(inventory.resolve()), "--output", str(out),
            "--status-every", "5", cwd=work,
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
        # No RAY_AUTH_MODE: ray-backup joins a token cluster with the token it finds.
        result = head_node.cli("status", "--json", env=head_node.bare_env(head_node.gcs))
        if result.returncode != 0:
            return None
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        return rows if rows and all(r["status"] == "success" for r in rows) else None

    rows = wait_for(statuses, 120, interval=2, message="every device backed up")
    assert {r["device_id"] for r in rows} == {d.id for d in devices}
    assert len(list((out).glob("*.rsc"))) == 3

    triggered = head_node.cli("trigger", devices[0].id, "--json")
    assert triggered.returncode == 0, triggered.stderr
    assert json.loads(triggered.stdout)["status"] == "success"
    # hostkey writes the inventory, then tells the running job, through token auth too.
    reset = head_node.cli("hostkey", "reset", devices[1].id, "--inventory", str(inventory.resolve()),
                          env=head_node.bare_env(head_node.gcs))
    assert reset.returncode == 0, reset.stderr[-2000:]
    assert "the running job re-read the inventory" in reset.stdout, reset.stdout
    limits = head_node.cli("limits", "--max-concurrent", "5")
    assert limits.returncode == 0, limits.stderr
    assert json.loads(limits.stdout.splitlines()[-1])["limit"] == 5

    # REDIS_URL came only through the job's runtime_env: the actors persisted state with it.
    r = redis.Redis.from_url(redis_url)
    assert all(r.exists(f"{redis_prefix}state:{d.id}") for d in devices)

    def job_logs():
        result = head_node.ray("job", "logs", job_id)
        return result.stdout + result.stderr  # the CLI prints the driver's log through its logger

    # The default RAY_BACKUP_DEVICES_PER_ACTOR=auto: at most 2 device-actor processes per node.
    assert "job running: 3 devices in 2 actors" in job_logs()

    # A relative path resolves inside Ray's copy of the working dir, which goes with the job.
    refused = head_node.ray("job", "submit", "--working-dir", ".", "--",
                            "ray-backup", "run", "--inventory", "devices.yaml", "--output", str(out),
                            cwd=work)
    assert refused.returncode != 0
    assert "--inventory 'devices.yaml' is inside the Ray job's working-dir copy" in (
        refused.stdout + refused.stderr)

    stopped = head_node.ray("job", "stop", job_id)
    assert stopped.returncode == 0, stopped.stderr

    def job_status():
        result = head_node.ray("job", "status", job_id)
        return result.stdout + result.stderr

    wait_for(lambda: "was stopped" in job_status(), 60, message="job stopped")
    wait_for(lambda: not head_node.named_actors(C.NAMESPACE), 60, interval=2, message="actors removed")
    assert not [d.id for d in devices if r.exists(C.DEVICE_LOCK_KEY.format(device_id=d.id))]
    assert "stopped 2 device actors" in job_logs()


def test_notebook_connect_joins_the_token_cluster_without_auth_settings(head_node):
    code = "import ray_backup.notebook as rb; print(rb.connect()['nodes'])"
    result = subprocess.run([sys.executable, "-c", code], env=head_node.bare_env(head_node.gcs),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "1", result.stderr[-2000:]
