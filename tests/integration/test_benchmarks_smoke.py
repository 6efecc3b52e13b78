"""Every benchmark script runs once in a tiny configuration and writes its results file.

The benchmarks are scripts, not timed tests: this only keeps them working. The six
run at the same time (each in its own process, with its own Ray), so the module costs
about as long as the slowest one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"

TINY = {
    "fleet_sweep": ["--devices", "4", "--concurrency", "2", "--repeats", "1", "--delay", "0",
                    "--config-bytes", "10000"],
    "overhead": ["--devices", "4", "--concurrency", "2", "--repeats", "1", "--config-bytes", "10000"],
    "memory_startup": ["--per-device", "", "--packed", "20", "--devices-per-actor", "10",
                       "--settle", "0", "--redis-url", "none"],
    "reconcile": ["--rows", "20", "--devices-per-actor", "10", "--repeats", "1"],
    "placement": ["--per-device", "", "--packed", "12", "--devices-per-actor", "2"],
    "history_writers": ["--seconds", "3", "--warmup", "1", "--devices", "10", "--backlog", "200"],
}

EXPECTED_KEYS = {
    "fleet_sweep": ("runs", "summary"),
    "overhead": ("runs", "summary"),
    "memory_startup": ("runs", "summary"),
    "reconcile": ("unchanged", "changed", "summary"),
    "placement": ("runs",),
    "history_writers": ("summary", "check", "per_second"),
}


@pytest.fixture(scope="module")
def launched(tmp_path_factory, redis_url, kafka_bootstrap):
    """All six scripts, started together; name -> (process, results path, log path)."""
    out = tmp_path_factory.mktemp("bench")
    procs = {}
    for name, args in TINY.items():
        extra = []
        if name == "overhead":
            extra = ["--redis-url", redis_url, "--kafka-bootstrap", kafka_bootstrap]
        results = out / f"{name}.json"
        log = out / f"{name}.log"
        with open(log, "w") as sink:
            proc = subprocess.Popen(
                [sys.executable, str(BENCH / f"{name}.py"), *args, *extra, "--output", str(results)],
                cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT,
            )
        procs[name] = (proc, results, log)
    yield procs
    for proc, _, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_tiny_and_writes_its_json(launched, name):
    proc, results, log = launched[name]
    try:
        code = proc.wait(timeout=200)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name} still running after 200 s:\n{log.read_text()[-3000:]}")
    assert code == 0, f"{name} exited {code}:\n{log.read_text()[-3000:]}"
    doc = json.loads(results.read_text())
    assert doc["benchmark"] == name
    assert doc["machine"]["nproc"] >= 1
    for key in EXPECTED_KEYS[name]:
        assert key in doc, f"{name} results lack {key!r}"
    assert "| " in log.read_text(), "the script printed no results table"


def test_help_of_every_script_names_its_options():
    for script in sorted(BENCH.glob("*.py")):
        if script.name == "benchlib.py":
            continue
        out = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0 and "usage:" in out.stdout, (script.name, out.stderr[-2000:])
