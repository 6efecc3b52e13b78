"""Every notebook in notebooks/ runs top to bottom without an error (real Ray, real SSH)."""

from __future__ import annotations

import json
import sys
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
    # The notebooks start their own local Ray and need no service.
    for name in ("RAY_ADDRESS", "DATABASE_URL", "REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS",
                 "RAY_BACKUP_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return KERNEL


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
