"""`ray-backup backup --json` on a mixed simulated fleet, as an operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.timeout(300)

FAULT_KINDS = {
    None: "success",
    "wrong_password": "auth_failed",
    "stall": "timeout",
    "disconnect": "truncated_output",
    "refuse": "connection_refused",
    "empty": "invalid_output",
    "garbage": "invalid_output",
    "huge": "truncated_output",
}


def test_mixed_fleet_is_backed_up_and_each_fault_classified(sim_fleet, tmp_path):
    faults = {kind: 1 for kind in FAULT_KINDS if kind}
    sim, devices, inventory = sim_fleet(
        10, faults=faults, versions=("7.16", "6.49.10", "7.10.1", "7.18.2")
    )
    rows = yaml.safe_load(inventory.read_text())["devices"]
    rows.append({"id": "not-a-uuid", "host": "127.0.0.1", "port": 22, "username": "a", "password": "b"})
    inventory.write_text(yaml.safe_dump({"devices": rows}))
    env = {**os.environ, "CONFIG_BACKUP_COMMAND_TIMEOUT": "4", "CONFIG_BACKUP_CONNECT_TIMEOUT": "3",
           "CONFIG_BACKUP_MAX_OUTPUT_BYTES": str(4 * 1024 * 1024), "RAY_ADDRESS": "local",
           "CONFIG_BACKUP_MAX_CONCURRENT": "3"}
    env.pop("REDIS_URL", None)
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    out = tmp_path / "backups"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "ray-backup"), "backup", "--inventory", str(inventory),
         "--output", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    results = {r["device_id"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert len(results) == 10
    for device in devices:
        r = results[device.id]
        assert set(r) == {"device_id", "status", "sha256_hash", "error_kind", "error", "duration_s"}
        expected = FAULT_KINDS[device.fault]
        if expected == "success":
            assert r["status"] == "success" and len(r["sha256_hash"]) == 64, r
        else:
            assert (r["status"], r["error_kind"]) == ("failed", expected), (device.fault, r)
    bad_row = [line for line in done.stderr.splitlines() if "not-a-uuid" in line]
    assert len(bad_row) == 1 and bad_row[0].startswith("error: inventory row")
    healthy = [d for d in devices if d.fault is None]
    assert sorted(p.stem for p in out.glob("*.rsc")) == sorted(d.id for d in healthy)
    assert sim.device(healthy[0].id).password not in done.stdout + done.stderr
    # No job, one node: the worker's own semaphore holds the SSH limit.
    assert 1 <= sim.stats.peak_active_commands <= 3
