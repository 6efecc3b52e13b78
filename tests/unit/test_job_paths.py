"""Under `ray job submit --working-dir .`, paths inside Ray's copy of the directory are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ray_backup import job
from ray_backup.settings import Settings

IN_A_JOB = {job.JOB_CONFIG_ENV: json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}})}


def settings(**env) -> Settings:
    return Settings.load(environ=env)


def test_a_job_is_detected_by_its_working_dir_and_the_copy_is_the_entrypoints_cwd(tmp_path):
    assert job.working_dir_copy(IN_A_JOB, cwd=str(tmp_path)) == os.path.realpath(tmp_path)
    no_dir = {job.JOB_CONFIG_ENV: json.dumps({"runtime_env": {"pip": ["x"]}})}
    assert job.working_dir_copy(no_dir, cwd=str(tmp_path)) is None
    assert job.working_dir_copy({}, cwd=str(tmp_path)) is None
    assert job.working_dir_copy({job.JOB_CONFIG_ENV: "not json"}, cwd=str(tmp_path)) is None


def test_relative_inventory_and_output_inside_the_copy_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    copy = job.working_dir_copy(IN_A_JOB)
    problem = job.working_dir_problem(settings(RAY_BACKUP_INVENTORY="fleet.yaml"), copy)
    assert "--inventory 'fleet.yaml' and --output './backups' are inside" in problem
    assert "absolute path" in problem and "\n" not in problem


def test_absolute_paths_outside_the_copy_kafka_and_no_job_pass(tmp_path, monkeypatch):
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    monkeypatch.chdir(copy_dir)
    copy = job.working_dir_copy(IN_A_JOB)
    outside = settings(RAY_BACKUP_INVENTORY=str(tmp_path / "fleet.yaml"),
                       RAY_BACKUP_OUTPUT_DIR=str(tmp_path / "out"))
    assert job.working_dir_problem(outside, copy) is None
    # With Kafka the output directory is not written; a database inventory has no file.
    kafka = settings(KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9092",
                     DATABASE_URL="postgresql://127.0.0.1/x")
    assert job.working_dir_problem(kafka, copy) is None
    assert job.working_dir_problem(settings(RAY_BACKUP_INVENTORY="fleet.yaml"), None) is None


def test_ray_backup_run_exits_2_before_touching_ray(tmp_path):
    cli = str(Path(sys.executable).parent / "ray-backup")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_BACKUP_", "KAFKA_"))}
    env.update(IN_A_JOB, RAY_ADDRESS="127.0.0.1:1")  # would fail differently if it got that far
    copy = tmp_path / "copy"
    copy.mkdir()
    done = subprocess.run([cli, "run", "--inventory", "fleet.yaml", "--output", str(tmp_path)],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --inventory 'fleet.yaml' is inside")
