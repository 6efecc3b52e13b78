"""A private local Ray for a benchmark, child processes that answer in JSON, and a
job that backs nothing up while it is measured."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil

from benchlib.common import RAY_TEMP_DIR, SERVICE_ENV, clean_env, scratch, unwind_on_sigterm
from benchlib.fleets import write_inventory


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, **options: Any) -> Iterator[None]:
    """A private local Ray instance for this process; shut down and checked on exit (also
    when the process is stopped with SIGTERM)."""
    import ray

    from ray_backup import constants as C

    unwind_on_sigterm()
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


def run_child(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> dict:
    """Run ``python <argv>``; its last stdout line starting ``RESULT `` is its JSON answer."""
    # Not run from the checkout: Ray puts the driver's working directory first on its
    # workers' path, which would hide a PYTHONPATH copy of ray_backup under test.
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir(),
                            env=env or clean_env())
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException:
        # SIGTERM first: the child shuts its Ray down (a killed one leaves Ray workers behind).
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(
        f"{' '.join(argv[:3])}… exited {proc.returncode} without a result:\n"
        f"{stdout[-2000:]}\n{stderr[-4000:]}"
    )


def child_answer(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


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


def token_auth_env(workdir: str | os.PathLike) -> dict[str, str]:
    """Token authentication for a Ray of our own and its clients: a fresh token in a
    private file, never the user's ``~/.ray/auth_token`` (another Ray's)."""
    import secrets

    path = Path(workdir) / "ray-auth-token"
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


class RayHead:
    """A ``ray start --head --block`` process: its GCS address, and whether it still runs."""

    def __init__(self, proc: subprocess.Popen, gcs: str) -> None:
        self.proc = proc
        self.gcs = gcs

    def check(self) -> None:
        """Fail loudly when the head has exited (a client of a dead head can hang)."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"the Ray head exited ({self.proc.returncode}); see its logs")


@contextlib.contextmanager
def ray_head(env: dict[str, str], num_cpus: int = 2, timeout: float = 180.0) -> Iterator[RayHead]:
    """``ray start --head --block`` as a user runs it (dashboard included), on ports of its
    own and a temp dir of its own; yields it once its dashboard agent listens (until then
    its raylet may still give up) and stops it (its process group) on exit."""
    import signal

    from tests.support.services import free_port, wait_for_port

    gcs, dashboard, agent = free_port(), free_port(), free_port()
    # Ray's default agent, client and metrics ports are fixed numbers that another Ray on
    # this machine may hold.
    own_ports = [f"--dashboard-agent-listen-port={agent}"] + [f"--{name}={free_port()}" for name in (
        "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port")]
    temp_dir = scratch("rbh")
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
         f"--port={gcs}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
         f"--num-cpus={num_cpus}", f"--object-store-memory={200 * 1024**2}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", *own_ports],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for port in (dashboard, agent):
            wait_for_port("127.0.0.1", port, timeout=timeout, proc=head)
        yield RayHead(head, f"127.0.0.1:{gcs}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
