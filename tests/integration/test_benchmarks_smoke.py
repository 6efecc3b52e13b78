"""Every benchmark script runs once in a tiny configuration and writes its results file.

The benchmarks are scripts, not timed tests: this only keeps them working. They run side by
side, at most four at a time (each in its own process, with its own Ray; sweep_vs_pool starts
a `ray start` head, then a CLI that starts its own Ray), with --allow-dirty (the suite runs
from work trees); the refusal of a dirty tree is checked on its own, in a throwaway git
repository.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(1200)
# Each script starts a Ray (sweep_vs_pool two, one after the other): on 2 shared cores,
# eight starting at once time out ("node timed out during startup").
AT_ONCE = 4
WAIT_S = 540

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
    "history_query": ["--versions", "5", "--repeats", "2", "--cli-repeats", "1",
                      "--config-bytes", "5000"],
    "first_result": ["--devices", "4", "--concurrency", "2", "--delay", "0",
                     "--config-bytes", "10000", "--sweeps", "2"],
    "sweep_vs_pool": ["--devices", "4", "--concurrency", "2", "--job-concurrency", "2",
                      "--cold-concurrency", "2", "--delay", "0", "--config-bytes", "10000"],
    "connections": ["--devices", "6", "--seconds", "2", "--jitter", "1", "--delay", "0"],
}

EXPECTED_KEYS = {
    "fleet_sweep": ("runs", "summary"),
    "overhead": ("runs", "summary"),
    "memory_startup": ("runs", "summary"),
    "reconcile": ("unchanged", "changed", "summary"),
    "placement": ("runs",),
    "history_writers": ("summary", "check", "per_second"),
    "first_result": ("runs", "parameters"),
    "sweep_vs_pool": ("runs", "summary", "parameters"),
    "history_query": ("results",),
    "connections": ("runs", "parameters"),
}


class Launcher:
    """Runs the scripts, at most ``AT_ONCE`` at a time, in a thread of its own."""

    def __init__(self, commands: dict[str, tuple[list[str], Path]]) -> None:
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self.started = {name: threading.Event() for name in commands}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for name, (argv, log) in self.commands.items():
            while sum(p.poll() is None for p in self.procs.values()) >= AT_ONCE:
                if self.stopping.wait(0.5):
                    return
            with open(log, "w") as sink:
                self.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdout=sink,
                                                    stderr=subprocess.STDOUT)
            self.started[name].set()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(10)
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()  # lets a script stop the fleet and the Ray it started
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(30)


@pytest.fixture(scope="module")
def launched(tmp_path_factory, redis_url, kafka_bootstrap):
    """All the scripts, started in turn; (launcher, name -> (results path, log path))."""
    out = tmp_path_factory.mktemp("bench")
    commands, paths = {}, {}
    for name, args in TINY.items():
        extra = []
        if name == "overhead":
            extra = ["--redis-url", redis_url, "--kafka-bootstrap", kafka_bootstrap]
        elif name == "connections":
            extra = ["--redis-url", redis_url]
        results, log = out / f"{name}.json", out / f"{name}.log"
        commands[name] = ([sys.executable, str(BENCH / f"{name}.py"), *args, *extra,
                           "--output", str(results), "--allow-dirty"], log)
        paths[name] = (results, log)
    launcher = Launcher(commands)
    yield launcher, paths
    launcher.stop()


@pytest.mark.parametrize("name", sorted(TINY))
def test_benchmark_runs_tiny_and_writes_its_json(launched, name):
    launcher, paths = launched
    results, log = paths[name]
    assert launcher.started[name].wait(WAIT_S), f"{name} not started within {WAIT_S} s"
    proc = launcher.procs[name]
    try:
        code = proc.wait(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(60)
        pytest.fail(f"{name} still running after {WAIT_S} s:\n{log.read_text()[-3000:]}")
    assert code == 0, f"{name} exited {code}:\n{log.read_text()[-3000:]}"
    doc = json.loads(results.read_text())
    assert doc["benchmark"] == name
    assert doc["machine"]["nproc"] >= 1
    for key in EXPECTED_KEYS[name]:
        assert key in doc, f"{name} results lack {key!r}"
    assert "| " in log.read_text(), "the script printed no results table"
    # Every results file and table names the commit and whether the tree was clean.
    assert doc["git_commit"] and isinstance(doc["git_clean"], bool)
    assert doc["publishable"] is doc["git_clean"]
    assert f"commit {doc['git_commit']}, " in log.read_text()
    if name == "sweep_vs_pool":  # every row ran, the job's one through the job's semaphore
        assert [row["ray"] for row in doc["summary"]] == [
            "already running", "running, with the job's semaphore", "started by the CLI"]
        assert all(row["all_ok"] for row in doc["summary"]), doc["summary"]


def test_help_of_every_script_names_its_options():
    for script in sorted(BENCH.glob("*.py")):
        out = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False)
        assert out.returncode == 0 and "usage:" in out.stdout, (script.name, out.stderr[-2000:])


# --- the refusal of a dirty tree -------------------------------------------------------------


@pytest.fixture
def provenance(tmp_path, monkeypatch):
    """benchlib.provenance looking at a throwaway git repository with its own ray_backup."""
    sys.path.insert(0, str(BENCH))
    try:
        from benchlib import provenance as module
    finally:
        sys.path.remove(str(BENCH))
    repo = tmp_path / "repo"
    (repo / "ray_backup").mkdir(parents=True)
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "ray_backup" / "__init__.py").write_text("")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "commit", "-qm", "one")
    monkeypatch.setattr(module, "REPO", repo)
    monkeypatch.setattr(module, "_package_dir", lambda: repo / "ray_backup")
    monkeypatch.setattr(module, "_at_start", None)
    return module, repo


def test_a_clean_tree_is_recorded_with_its_commit(provenance):
    module, repo = provenance
    (repo / "benchmarks" / "results" / "x.json").write_text("{}")  # a run's own output
    state = module.require_clean(allow_dirty=False)
    assert state["git_clean"] and len(state["git_commit_full"]) == 40
    assert module.record()["publishable"] is True
    assert module.line(module.record()) == f"commit {state['git_commit']}, clean tree"


def test_a_dirty_tree_is_refused_unless_allowed_and_then_not_publishable(provenance, capsys):
    module, repo = provenance
    (repo / "ray_backup" / "__init__.py").write_text("CHANGED = 1\n")
    with pytest.raises(SystemExit, match="uncommitted changes .*ray_backup/__init__.py"):
        module.require_clean(allow_dirty=False)
    module.require_clean(allow_dirty=True)
    assert "NOT publishable" in capsys.readouterr().err
    doc = module.record()
    assert doc["git_clean"] is False and doc["publishable"] is False
    assert doc["uncommitted_files"] == ["ray_backup/__init__.py"]
    assert "not publishable" in module.line(doc)


def test_another_trees_ray_backup_is_refused(provenance, monkeypatch, tmp_path):
    module, _ = provenance
    monkeypatch.setattr(module, "_package_dir", lambda: tmp_path / "elsewhere" / "ray_backup")
    with pytest.raises(SystemExit, match="ray_backup is imported from .*elsewhere"):
        module.require_clean(allow_dirty=False)


def test_a_tree_that_changes_during_the_run_is_not_publishable(provenance):
    module, repo = provenance
    module.require_clean(allow_dirty=False)
    (repo / "new.py").write_text("")
    assert module.record()["publishable"] is False
