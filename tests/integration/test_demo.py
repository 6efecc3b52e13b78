"""`ray-backup demo`, run as the README runs it: a subprocess with nothing but this package."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ray_backup import demo
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.timeout(240)

CLI = str(Path(sys.executable).parent / "ray-backup")


@pytest.fixture
def ray_tmp():
    """Ray's temp root for one demo: short (unix socket paths), and a way to find its processes."""
    path = tempfile.mkdtemp(prefix="rbdemo")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def demo_process(ray_tmp: str, output: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS")}
    env.update(RAY_TMPDIR=ray_tmp, COLUMNS="160")
    # A session of its own: Ctrl-C in a terminal reaches the whole process group.
    return subprocess.Popen([CLI, "demo", "--output", str(output), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def processes_using(path: str) -> list[str]:
    """Command lines of running processes that mention ``path`` (Ray's do: --temp-dir, logs)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if path in cmdline:
            found.append(f"{proc.name} {cmdline[:160]}")
    return found


def snapshot_lines(output: Path) -> list[dict]:
    history = output / "snapshots.jsonl"
    if not history.exists():
        return []
    return [json.loads(line) for line in history.read_text().splitlines()]


def test_demo_runs_to_its_end_and_leaves_snapshots_and_no_process(tmp_path, ray_tmp):
    output = tmp_path / "backups"
    proc = demo_process(ray_tmp, output, "--devices", "5", "--duration", "15")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "demo finished" in out and str(output) in out and "dashboard" in out
    events = snapshot_lines(output)
    # Five devices, one with a wrong password and one stalling: three back up, every 10 s.
    backed_up = {e["device_id"] for e in events}
    assert len(backed_up) == 3, out
    assert {p.stem for p in output.glob("*.rsc")} == backed_up
    assert {e["routeros_version"].split(".")[0] for e in events} == {"6", "7"}
    assert "auth_blocked" in out and "timeout" in out  # the faulty devices, shown as such
    # It ends with the most changed device's history and a real diff of the run, masked.
    tail = out[out.index("demo finished"):]
    assert "history of sim-" in tail and "first version" in tail, tail
    assert re.search(r"^\+add address=172\.16\.\d+\.\d+/32 comment=changed-\d+ ", tail, re.M), tail
    assert "SIMSECRET" not in out  # no secret of the fleet (each holds its device's marker)
    assert processes_using(ray_tmp) == []


def test_ctrl_c_stops_the_demo_cleanly(tmp_path, ray_tmp):
    output = tmp_path / "backups"
    proc = demo_process(ray_tmp, output, "--devices", "3", "--duration", "300")
    try:
        wait_for(lambda: snapshot_lines(output), 120, message="a first snapshot")
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "demo interrupted" in out and "Traceback" not in out, out
    time.sleep(1)  # the raylet's children exit right after it
    assert processes_using(ray_tmp) == []


# -- the demo's parts, without Ray ----------------------------------------------------------


def test_plan_packs_devices_into_few_processes_above_sixteen():
    assert demo.plan(12) == demo.Plan(12, 1, {"wrong_password": 1, "stall": 1})
    assert demo.plan(16).per_actor == 1
    big = demo.plan(100)
    assert big.per_actor == 13 and big.actors <= demo.MAX_ACTORS
    assert demo.plan(2).faults == {}
    with pytest.raises(ValueError):
        demo.plan(0)


def test_demo_env_uses_no_service_even_when_the_shell_names_one(tmp_path):
    base = {"REDIS_URL": "redis://example:6379/0", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
            "CONFIG_BACKUP_MAX_CONCURRENT": "4"}
    env = demo.demo_env(base, tmp_path / "inv.yaml", tmp_path / "out", 3)
    assert env["REDIS_URL"] == env["KAFKA_BOOTSTRAP_SERVERS"] == env["DATABASE_URL"] == ""
    assert env["CONFIG_BACKUP_MAX_CONCURRENT"] == "4"
    assert env["RAY_BACKUP_DEVICES_PER_ACTOR"] == "3" and env["RAY_BACKUP_METRICS_PORT"] == "0"
    from ray_backup.settings import Settings

    settings = Settings.load(environ=env)
    assert settings.redis_url is None and settings.kafka_bootstrap_servers is None
    assert settings.backup_interval == 10 and settings.jitter_max == 3


def test_snapshot_log_counts_snapshots_and_changes_from_where_it_started(tmp_path):
    history = tmp_path / "snapshots.jsonl"
    history.write_text(json.dumps({"device_id": "a", "sha256_hash": "old"}) + "\n")
    log = demo.SnapshotLog.from_end(history)
    lines = [("a", "1"), ("b", "9"), ("a", "1"), ("a", "2"), ("b", "9")]
    with history.open("a") as f:
        for device, digest in lines:
            f.write(json.dumps({"device_id": device, "sha256_hash": digest}) + "\n")
        f.write('{"device_id": "a", "sha2')  # a line still being written
    log.poll()
    assert log.snapshots == {"a": 3, "b": 2}
    assert log.changes == {"a": 1}


def test_backup_outcomes_reads_the_reference_counter():
    text = ('# TYPE mikrotik_config_backup_total counter\n'
            'mikrotik_config_backup_total{status="success"} 7.0\n'
            'mikrotik_config_backup_total{status="error"} 2.0\n')
    assert demo.backup_outcomes(text) == {"success": 7.0, "error": 2.0}
