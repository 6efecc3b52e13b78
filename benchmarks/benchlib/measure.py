"""CPU and memory of process trees: what a tool used over a window, sampled from outside."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil


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
