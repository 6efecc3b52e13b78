"""Every notebook in notebooks/ runs top to bottom without an error (real Ray, real SSH)."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
KERNEL = "ray-backup-test"

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A kernelspec that runs this interpreter, so a fresh venv needs no `ipykernel install`."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "ray-backup tests",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The notebook's local Ray keeps its files (and its current-cluster note) apart.
    ray_tmp = tempfile.mkdtemp(prefix="rbnb")  # short: unix socket paths live under it
    monkeypatch.setenv("RAY_TMPDIR", ray_tmp)
    # The notebooks start their own local Ray and need no service.
    for name in ("RAY_ADDRESS", "DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS",
                 "RAY_BACKUP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    yield KERNEL
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_there_is_a_notebook():
    assert NOTEBOOKS, "notebooks/ holds no notebook"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, kernel, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, kernel_name=kernel, timeout=120,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    errors = [out for cell in notebook.cells if cell.cell_type == "code"
              for out in cell.get("outputs", []) if out.get("output_type") == "error"]
    assert errors == []


def test_diff_reads_a_devices_snapshots_back_from_kafka(kafka_bootstrap, make_topic, monkeypatch,
                                                        tmp_path):
    import ray_backup.notebook as rb
    from ray_backup.settings import Settings
    from ray_backup.sinks.kafka import KafkaSink
    from ray_backup.snapshot import Snapshot

    topic = make_topic(partitions=2)
    settings = Settings(kafka_bootstrap_servers=kafka_bootstrap, kafka_topic=topic,
                        spool_dir=str(tmp_path / "spool"))
    configs = {"a": ["/ip address\nadd address=10.0.0.1/24\n"] * 2
               + ["/ip address\nadd address=10.0.0.1/24\nadd address=10.0.0.2/24\n"],
               "b": ["/system identity\nset name=b\n"] * 3}
    sink = KafkaSink(settings)
    try:
        for n in range(3):  # one at a time: each publish waits for the broker's ack
            for device, texts in configs.items():
                sink.publish(Snapshot(device_id=device, tenant_id="t", sha256_hash=f"{device}{texts[n]}",
                                      collected_at=f"2026-01-01T00:00:0{n}Z", config_text=texts[n],
                                      normalization_version=1, routeros_version="7.16"))
    finally:
        sink.close()
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("KAFKA_TOPIC", topic)
    latest = rb.snapshots("a", limit=2)
    assert [e["collected_at"][-2:] for e in latest] == ["1Z", "2Z"]
    # Reading back one message at a time still finds them, across both partitions.
    assert rb._kafka_snapshots(settings, "a", limit=3, window=1) == rb.snapshots("a", limit=3)
    change = rb.diff("a")
    assert "+add address=10.0.0.2/24" in change and "-add" not in change
    assert rb.diff("b") == ""
