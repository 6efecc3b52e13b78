"""What every benchmark script shares: the simulated fleet in its own process, CPU
accounting over process trees, a private local Ray, results files and tables.

The scripts import it as a sibling module (``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # tests.support.services starts Kafka and PostgreSQL servers
    # Last, so that a PYTHONPATH copy of ray_backup (to measure a proposed change) wins.
    sys.path.append(str(REPO))
RESULTS = HERE / "results"
# Ray's sockets and session files live here, apart from /tmp/ray, so a benchmark never
# joins (or is joined by) another Ray instance running on the same machine.
RAY_TEMP_DIR = os.path.join(tempfile.gettempdir(), "rb-bench-ray")
# Settings that would point the code under test at shared services by accident.
SERVICE_ENV = ("REDIS_URL", "KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "RAY_ADDRESS",
               "RAY_BACKUP_CONFIG", "RAY_BACKUP_INVENTORY", "OPENBAO_ADDR", "OPENBAO_TOKEN")


# --------------------------------------------------------------------------- the fleet


class SimFleet:
    """``python -m ray_backup.simulator`` in a child process, so its CPU is its own.

    Use as a context manager; ``rows`` are the inventory rows (with ports) and
    ``inventory`` the YAML file ray-backup reads.
    """

    def __init__(self, devices: int, workdir: str | os.PathLike, *, delay: float = 0.0,
                 config_bytes: int | None = None, seed: int = 0, timeout: float = 600.0) -> None:
        self.n = devices
        self.inventory = Path(workdir) / f"fleet-{devices}.yaml"
        argv = [sys.executable, "-m", "ray_backup.simulator", "--devices", str(devices),
                "--inventory", str(self.inventory), "--delay", str(delay), "--seed", str(seed)]
        if config_bytes:
            argv += ["--config-bytes", str(config_bytes)]
        self.argv = argv
        self.timeout = timeout
        self.proc: subprocess.Popen | None = None
        self.rows: list[dict] = []
        self._io = threading.Lock()

    def __enter__(self) -> SimFleet:
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, cwd=REPO, env=clean_env())
        try:
            line = _readline(self.proc, self.timeout)
            if not line.startswith("ready"):
                raise RuntimeError(f"simulator did not start: {line!r}")
            self.rows = yaml.safe_load(self.inventory.read_text())["devices"]
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict:
        with self._io:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write("stats\n")
            self.proc.stdin.flush()
            return json.loads(_readline(self.proc, 30))

    def cpu_seconds(self) -> float:
        """The simulator's CPU so far, read from outside (no round trip through it)."""
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def close(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    """One stdout line from ``proc``, or an error when it exits or takes too long."""
    box: list[str] = []
    reader = threading.Thread(target=lambda: box.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not box:
        raise TimeoutError(f"no answer from pid {proc.pid} within {timeout:g} s")
    if not box[0]:
        raise RuntimeError(f"pid {proc.pid} exited ({proc.poll()})")
    return box[0].strip()


def write_fingerprints(inventory: Path, rows: Sequence[dict], workers: int = 10) -> int:
    """Store every device's host key in the inventory's sidecar, as after a first backup.

    The benchmarks measure the steady state (keys known); trust on first use is a
    one-time cost per device that ``fleet_sweep --first-use`` measures on its own.
    """
    from concurrent.futures import ThreadPoolExecutor

    import paramiko

    from ray_backup.transport.ssh import fingerprint

    def scan(row: dict) -> tuple[str, str]:
        transport = paramiko.Transport((row["host"], row["port"]))
        try:
            transport.start_client(timeout=30)
            return row["id"], fingerprint(transport.get_remote_server_key())
        finally:
            transport.close()

    with ThreadPoolExecutor(workers) as pool:
        keys = dict(pool.map(scan, rows))
    sidecar = Path(f"{inventory}.hostkeys.json")
    sidecar.write_text(json.dumps({k: {"fingerprint": v} for k, v in keys.items()}, indent=1))
    return len(keys)


def scratch(prefix: str) -> str:
    """A temporary directory removed when this process exits (snapshots, inventories)."""
    import atexit
    import shutil

    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def export_command(row: dict) -> str:
    """The command ray-backup's driver runs for this row (v6 has no show-sensitive)."""
    from ray_backup.drivers.routeros import export_command as routeros_export

    return routeros_export(row.get("routeros_version"), "show-sensitive")


# --------------------------------------------------------------------------- CPU and memory


def tree(root: int, exclude: Iterable[int] = ()) -> list[psutil.Process]:
    """``root`` and its descendants, minus the ``exclude`` pids and their descendants."""
    skip = set(exclude)
    try:
        top = psutil.Process(root)
    except psutil.NoSuchProcess:
        return []
    found, stack = [], [top]
    while stack:
        proc = stack.pop()
        if proc.pid in skip:
            continue
        found.append(proc)
        with contextlib.suppress(psutil.Error):
            stack.extend(proc.children())
    return found


def tree_cpu(root: int | None = None, exclude: Iterable[int] = ()) -> float:
    """CPU seconds of a process tree, including children it has already reaped.

    Reaped children count through their parent's ``children_*`` times, so an actor
    process that Ray kills in the middle of a window is not lost.
    """
    total = 0.0
    for proc in tree(root or os.getpid(), exclude):
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _kind(proc: psutil.Process, root: int) -> str:
    return _label(proc, root)[0]


def _label(proc: psutil.Process, root: int) -> tuple[str, str]:
    """(kind, label): kind is driver, ray_workers or ray_services; the label names the
    actor class of a worker (``ray::FleetWorker``) or the service (``raylet``)."""
    if proc.pid == root:
        return "driver", "driver"
    try:
        argv = proc.cmdline()
    except psutil.Error:
        argv = []
    head = " ".join(argv[:3])
    if "default_worker.py" in head or head.startswith("ray::"):
        # The title is ray::<Class> or, during a call, ray::<Class>.<method>.
        title = argv[0].split()[0].split(".")[0] if argv and argv[0].startswith("ray::") else "ray::worker"
        return "ray_workers", title
    name = Path(argv[0]).name if argv else "?"
    if name.startswith("python") and len(argv) > 1:
        name = Path(argv[1]).name
    return "ray_services", name


def ray_processes(root: int | None = None) -> dict[str, list[psutil.Process]]:
    """The Ray processes under ``root`` by label (actor class or service name)."""
    root = root or os.getpid()
    found: dict[str, list[psutil.Process]] = {}
    for proc in tree(root):
        if proc.pid != root:
            found.setdefault(_label(proc, root)[1], []).append(proc)
    return found


def memory_of(procs: Iterable[psutil.Process]) -> dict[str, float]:
    """Summed RSS and USS (bytes) of ``procs``; USS is what a process alone holds."""
    rss = uss = 0.0
    count = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            uss += info.uss
            count += 1
    return {"processes": count, "rss_bytes": rss, "uss_bytes": uss}


def wait_quiet(root: int | None = None, exclude: Iterable[int] = (), *, below: float = 0.10,
               window: float = 1.0, patience: float = 20.0) -> float:
    """Wait until the tree uses less than ``below`` cores over ``window`` seconds
    (Ray keeps starting things for a while after ``ray.init``); return the wait."""
    started = time.monotonic()
    last = tree_cpu(root, exclude)
    while time.monotonic() - started < patience:
        time.sleep(window)
        now = tree_cpu(root, exclude)
        if (now - last) / window < below:
            break
        last = now
    return time.monotonic() - started


class Window:
    """Wall time and CPU of a process tree (and of the simulator) over one interval.

    A sampler thread reads every process's CPU every ``interval`` seconds, so that a
    process that exits inside the window still counts up to its last sample (Ray's
    worker processes are not always reaped by a process of the tree). The sampler's
    own CPU is subtracted from the driver's.
    """

    def __init__(self, sim_pid: int | None = None, root: int | None = None,
                 interval: float = 0.25) -> None:
        self.sim_pid = sim_pid
        self.watched = watched_pids()
        self._others0: dict[str, float] = {}
        self.root = root or os.getpid()
        self.interval = interval
        self.result: dict[str, Any] | None = None
        self._exclude = ([sim_pid] if sim_pid else []) + list(self.watched.values())
        self._baseline: dict[int, float] = {}
        self._latest: dict[int, tuple[str, float]] = {}
        self._labels: dict[int, str] = {}
        self._sampler_cpu = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._sim0 = 0.0
        self.marks: dict[str, tuple[float, float]] = {}

    def _sim_cpu(self) -> float:
        if not self.sim_pid:
            return 0.0
        t = psutil.Process(self.sim_pid).cpu_times()
        return t.user + t.system

    def _sample(self) -> dict[int, tuple[str, float]]:
        seen = {}
        for proc in tree(self.root, self._exclude):
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                kind, label = _label(proc, self.root)
                seen[proc.pid] = (kind, t.user + t.system)
                self._labels[proc.pid] = label
        return seen

    def by_process(self) -> dict[str, float]:
        """CPU seconds in the window by actor class or service name."""
        found: dict[str, float] = {}
        with self._lock:
            for pid, (_, cpu) in self._latest.items():
                label = self._labels.get(pid, "?")
                found[label] = found.get(label, 0.0) + max(0.0, cpu - self._baseline.get(pid, 0.0))
        found["driver"] = max(0.0, found.get("driver", 0.0) - self._sampler_cpu)
        return {k: round(v, 3) for k, v in sorted(found.items(), key=lambda kv: -kv[1]) if v > 0}

    def _record(self, seen: dict[int, tuple[str, float]]) -> None:
        with self._lock:
            for pid, (kind, cpu) in seen.items():
                old = self._latest.get(pid)
                if old is None or cpu >= old[1]:
                    self._latest[pid] = (kind, cpu)

    def _run(self) -> None:
        own = time.thread_time()
        while not self._stop.wait(self.interval):
            self._record(self._sample())
            self._sampler_cpu = time.thread_time() - own
        self._sampler_cpu = time.thread_time() - own

    def _split(self) -> dict[str, float]:
        split = {"driver": 0.0, "ray_workers": 0.0, "ray_services": 0.0}
        with self._lock:
            for pid, (kind, cpu) in self._latest.items():
                split[kind] += max(0.0, cpu - self._baseline.get(pid, 0.0))
        split["driver"] = max(0.0, split["driver"] - self._sampler_cpu)
        return split

    def mark(self, name: str) -> None:
        """Remember the wall time and CPU so far under ``name`` (see ``steady``)."""
        self._record(self._sample())
        self.marks[name] = (time.perf_counter() - self._t0, sum(self._split().values()))

    def steady(self, first: str, last: str, count: int) -> dict[str, float] | None:
        """Rate and CPU per item between two marks ``count`` items apart: the cost of
        one more backup once everything is started, without start-up and tail."""
        if first not in self.marks or last not in self.marks or count <= 0:
            return None
        (w0, c0), (w1, c1) = self.marks[first], self.marks[last]
        if w1 <= w0:
            return None
        return {"per_s": round(count / (w1 - w0), 3), "cpu_ms_per_item": round(1000 * (c1 - c0) / count, 3)}

    def start(self) -> Window:
        self._baseline = {pid: cpu for pid, (_, cpu) in self._sample().items()}
        self._sim0 = self._sim_cpu()
        self._others0 = {name: pid_cpu(pid) for name, pid in self.watched.items()}
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        if self.result is not None:
            return self.result
        assert self._thread is not None, "start() first"
        wall = time.perf_counter() - self._t0
        sim = self._sim_cpu() - self._sim0
        others = {name: round(pid_cpu(pid) - self._others0[name], 4)
                  for name, pid in self.watched.items()}
        final = self._sample()
        self._stop.set()
        self._thread.join()
        self._record(final)
        split = self._split()
        self.result = {
            "wall_s": round(wall, 4),
            "cpu_s": round(sum(split.values()), 4),
            "cpu_split_s": {k: round(v, 4) for k, v in split.items()},
            "cpu_by_process_s": self.by_process(),
            "sim_cpu_s": round(sim, 4),
            "services_cpu_s": others,
        }
        return self.result


#: Names the service processes (Kafka broker, Redis) whose CPU a child reports apart:
#: ``kafka=1234,redis=5678``. They are never counted as the tool's own CPU.
WATCH_ENV = "RB_BENCH_WATCH"


def watched_pids() -> dict[str, int]:
    text = os.environ.get(WATCH_ENV, "")
    return {name: int(pid) for name, _, pid in (item.partition("=") for item in text.split(",") if item)}


def pid_cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return t.user + t.system


def listening_pid(port: int) -> int | None:
    """The process listening on TCP ``port`` on this machine, if it can be seen."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                return conn.pid
    return None


# --------------------------------------------------------------------------- Ray


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without settings that would reach shared services."""
    env = {k: v for k, v in os.environ.items() if k not in SERVICE_ENV}
    env.update(extra)
    return env


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, **options: Any) -> Iterator[None]:
    """A private local Ray instance for this process; shut down and checked on exit."""
    import ray

    from ray_backup import constants as C

    for name in SERVICE_ENV:
        if name == "RAY_ADDRESS":
            os.environ.pop(name, None)
    options.setdefault("include_dashboard", False)
    options.setdefault("object_store_memory", 100 * 1024**2)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    ray.init(address="local", num_cpus=num_cpus, namespace=C.NAMESPACE,
             _temp_dir=RAY_TEMP_DIR, **options)
    session = ray._private.worker._global_node.get_session_dir_path()
    try:
        yield
    finally:
        ray.shutdown()
        import shutil

        shutil.rmtree(session, ignore_errors=True)  # its logs: ~5 MB per run
        leftovers = wait_children_gone(15.0, keep=before)
        if leftovers:
            names = sorted({_name(p) for p in leftovers})
            print(f"warning: {len(leftovers)} Ray processes outlived ray.shutdown() ({names}); "
                  "killing them", file=sys.stderr)
            for proc in leftovers:
                with contextlib.suppress(psutil.Error):
                    proc.kill()


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline()[:2])[-60:] or proc.name()
    except psutil.Error:
        return "?"


def wait_children_gone(patience: float, keep: Iterable[int] = ()) -> list[psutil.Process]:
    """Wait until this process has no children left (besides ``keep``); return the rest."""
    keep = set(keep)
    deadline = time.monotonic() + patience
    while True:
        alive = [p for p in psutil.Process().children(recursive=True)
                 if p.pid not in keep and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


# --------------------------------------------------------------------------- children


def run_child(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run ``python <argv>``; its last stdout line starting ``RESULT `` is its JSON answer."""
    # Not run from the checkout: Ray puts the driver's working directory first on its
    # workers' path, which would hide a PYTHONPATH copy of ray_backup under test.
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          cwd=tempfile.gettempdir(), env=env or clean_env(), timeout=timeout,
                          check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(
        f"{' '.join(argv[:3])}… exited {proc.returncode} without a result:\n"
        f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )


def child_answer(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- results


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import paramiko
    import ray

    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "ray": ray.__version__,
        "paramiko": paramiko.__version__,
        "os": f"{platform.system()} {platform.release()}",
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return out.stdout.strip() or None


def uncommitted_code() -> list[str]:
    """Files of the package that differ from the commit (what the run used is the tree)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "ray_backup"], cwd=REPO,
                             capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return []
    return [line[3:] for line in out.stdout.splitlines()]


def save(name: str, payload: dict, output: str | os.PathLike | None = None) -> Path:
    """Write ``payload`` with machine and run details to results/<name>.json (or ``output``)."""
    path = Path(output) if output else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "uncommitted_ray_backup_files": uncommitted_code(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine(),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def median(values: Iterable[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(value: float | None, reference: float | None, name: str) -> str:
    """``0.91× floor``: ``value`` as a multiple of ``reference``."""
    if not value or not reference:
        return "n/a"
    return f"{value / reference:.2f}× {name}"


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def status_counts(results: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        key = r.get("status") if r.get("status") != "failed" else f"failed:{r.get('error_kind')}"
        counts[key] = counts.get(key, 0) + 1
    return counts


class Progress:
    """Counts completed backups; marks the window at 10 % and 90 % and stops it at 100 %."""

    def __init__(self, window: Window, total: int) -> None:
        self.window = window
        self.total = total
        self.low = max(1, total // 10)
        self.high = max(self.low + 1, total - total // 10)
        self.count = 0
        self.first_s: float | None = None
        self._lock = threading.Lock()

    def done(self) -> None:
        with self._lock:
            self.count += 1
            count = self.count
        if count == 1:
            self.first_s = round(time.perf_counter() - self.window._t0, 3)
        if count == self.low:
            self.window.mark("low")
        if count == self.high:
            self.window.mark("high")
        if count == self.total:
            self.window.stop()

    def summary(self) -> dict[str, Any]:
        return {"first_result_s": self.first_s,
                "steady": self.window.steady("low", "high", self.high - self.low)}


def write_inventory(path: str | os.PathLike, n: int, seed: int = 0, port_base: int = 20_000) -> list[dict]:
    """A YAML inventory of ``n`` devices that nothing answers for (127.0.0.1, unused
    ports): for benchmarks during which no backup runs (start-up, memory, placement)."""
    from ray_backup.simulator.fleet import DEFAULT_PASSWORD, DEFAULT_TENANT, device_id

    rows = [{"id": device_id(seed, i), "tenant_id": DEFAULT_TENANT, "hostname": f"bench-{i:05d}",
             "host": "127.0.0.1", "port": port_base + i % 40_000, "username": "admin",
             "password": DEFAULT_PASSWORD, "routeros_version": "7.16"} for i in range(n)]
    Path(path).write_text(yaml.safe_dump({"devices": rows}, sort_keys=False))
    return rows


#: Settings that keep a started job from backing anything up while it is measured.
QUIET_JOB_ENV = {
    "CONFIG_BACKUP_JITTER_MIN": "86400",
    "CONFIG_BACKUP_JITTER_MAX": "86401",
    "CONFIG_BACKUP_INTERVAL": "172800",
    "DEVICE_REFRESH_SECONDS": "3600",
    "RAY_BACKUP_METRICS_PORT": "0",
}


def hosted_loops(timeout: float = 30.0) -> dict[str, dict]:
    """Every device actor of the running job: name -> its ping (node, device ids with a loop)."""
    import ray

    from ray_backup import constants as C

    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a.get("namespace") == C.NAMESPACE
             and a["name"].startswith((C.DEVICE_ACTOR_PREFIX, C.DEVICE_GROUP_PREFIX))]
    handles = {name: ray.get_actor(name, namespace=C.NAMESPACE) for name in names}
    refs = {name: h.ping.remote() for name, h in handles.items()}
    found = {}
    for name, ref in refs.items():
        try:
            found[name] = ray.get(ref, timeout=timeout)
        except Exception:
            continue
    return found


def quiet_job_settings(prefix: str, n: int, per_actor: int):
    """A YAML inventory of ``n`` devices in a scratch dir, and this process's environment set
    for a job that backs nothing up while measured: (settings, env for the actors)."""
    from ray_backup import job
    from ray_backup.settings import Settings

    workdir = Path(scratch(prefix))
    inventory = workdir / "devices.yaml"
    write_inventory(inventory, n)
    os.environ.update(QUIET_JOB_ENV)
    os.environ.update({"RAY_BACKUP_INVENTORY": str(inventory),
                       "RAY_BACKUP_OUTPUT_DIR": str(workdir / "out"),
                       "RAY_BACKUP_DEVICES_PER_ACTOR": str(per_actor)})
    return Settings.load(), job.actor_env()
