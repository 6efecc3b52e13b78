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


def test_history_diff_show_and_search_read_the_store_as_dataframes(tmp_path, monkeypatch):
    import pandas as pd

    import ray_backup.notebook as rb
    from ray_backup.history.directory import DirectoryHistory
    from tests.support.history import DEVICE, at, capture_text, insert_after, snapshot

    monkeypatch.delenv("DATABASE_URL", raising=False)
    base = capture_text()
    changed = insert_after(base, "/ip address", "add address=10.9.9.9/24 interface=bridge")
    secret = insert_after(changed, "/ip address", "add address=10.8.8.8/24 comment=x password=hunter22")
    store = DirectoryHistory(tmp_path)
    for hours, text in enumerate([base, base, changed, secret]):
        store.store(snapshot(text, at(hours)))
    store.store(snapshot(base, at(0), device="other-device"))
    store.close()

    versions = rb.history(DEVICE, output=tmp_path)
    assert len(versions) == 3 and versions.collected_at.is_monotonic_decreasing
    assert isinstance(versions.collected_at.dtype, pd.DatetimeTZDtype)
    assert versions.lines_added.isna().tolist() == [False, False, True]
    assert "ip/address" in versions.sections.iloc[0]
    fleet = rb.history(output=tmp_path)
    assert sorted(fleet.device_id.unique()) == sorted([DEVICE, "other-device"]) and len(fleet) == 4

    last = rb.diff(DEVICE, output=tmp_path)
    assert "+add address=10.8.8.8/24 comment=x password=***" in last and "hunter22" not in last
    assert "hunter22" in rb.diff(DEVICE, output=tmp_path, show_secrets=True)
    first_change = rb.diff(DEVICE, versions.snapshot_id.iloc[2][:8], versions.snapshot_id.iloc[1],
                           output=tmp_path)
    assert first_change.splitlines().count("+add address=10.9.9.9/24 interface=bridge") == 1
    assert "hunter22" not in rb.show(DEVICE, output=tmp_path)

    found = rb.search(r"^add address=10\.9\.9\.9/", output=tmp_path)
    assert found.columns.tolist() == ["hostname", "device_id", "section", "line"]
    assert found.device_id.tolist() == [DEVICE] and found.section.tolist() == ["/ip address"]
    assert rb.search("nothing matches this", output=tmp_path).empty
