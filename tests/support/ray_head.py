"""A `ray start --head` cluster with Ray's default token authentication, driven by Ray's CLI.

Ray >= 2.59 starts `ray start --head` with token authentication when a token exists
(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token). Each head here gets its own
HOME, so `ray get-auth-token --generate` writes a token only it and its clients see, and
nothing touches the machine's ~/.ray. Clients get the README's environment: the same
HOME (the token), RAY_AUTH_MODE=token and RAY_ADDRESS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port, wait_for_port

BIN = Path(sys.executable).parent
# What a caller's shell may carry that would change how the head or its clients authenticate.
AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")


@dataclass(frozen=True)
class RayHead:
    gcs: str  # 127.0.0.1:port, what `ray-backup` commands take as RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:port, what `ray job` commands take
    home: Path  # holds .ray/auth_token

    def env(self, address: str | None = None, **extra: str) -> dict[str, str]:
        """A client's environment as the README sets it up (RAY_AUTH_MODE=token)."""
        env = self.bare_env(address, **extra)
        env.setdefault("RAY_AUTH_MODE", "token")
        return env

    def bare_env(self, address: str | None = None, **extra: str) -> dict[str, str]:
        """A client's environment with the token file but no RAY_AUTH_MODE."""
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        env.update(HOME=str(self.home), PATH=f"{BIN}:{os.environ['PATH']}",
                   RAY_ADDRESS=address or self.dashboard)
        env.update(extra)
        return env

    def ray(self, *args: str, env=None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run Ray's CLI as a client of this head."""
        return subprocess.run([str(BIN / "ray"), *args], env=env or self.env(), cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run `ray-backup` against this head's GCS."""
        return subprocess.run([str(BIN / "ray-backup"), *args], env=env or self.env(self.gcs),
                              capture_output=True, text=True, timeout=timeout)

    def named_actors(self, namespace: str) -> list[dict]:
        """Named actors of ``namespace`` that are not dead (through the state API)."""
        result = self.ray("list", "actors", "--format", "json", "--limit", "10000",
                          "--filter", f"ray_namespace={namespace}", "--filter", "state!=DEAD")
        if result.returncode != 0:
            raise RuntimeError(f"ray list actors failed: {result.stderr[-500:]}")
        if not result.stdout.lstrip().startswith("["):
            return []  # "No resource in the cluster"
        return [a for a in json.loads(result.stdout) if a.get("name")]


@contextmanager
def token_auth_head(num_cpus: int = 2, object_store_mb: int = 100, **env: str) -> Iterator[RayHead]:
    """Start a one-node cluster with `ray start --head --block` and Ray's default token
    authentication; ``env`` is added to the head's environment. Stopped after."""
    home = Path(tempfile.mkdtemp(prefix="rbtokhome", dir="/tmp"))
    temp_dir = tempfile.mkdtemp(prefix="rbtok", dir="/tmp")  # short: Ray's socket paths
    gcs_port, dash_port = free_port(), free_port()
    head_env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
    head_env.update(HOME=str(home), PATH=f"{BIN}:{os.environ['PATH']}", **env)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=head_env, check=True,
                   capture_output=True, timeout=60)
    # Ray's default agent, client and metrics ports are fixed numbers: another Ray on this
    # machine would hold them and leave this head without a job agent.
    own_ports = [
        f"--{name}={free_port()}"
        for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                     "runtime-env-agent-port", "metrics-export-port", "ray-client-server-port")
    ]
    head = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs_port}",
         f"--dashboard-port={dash_port}", "--dashboard-host=127.0.0.1", "--include-dashboard=true",
         f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb * 1024**2}",
         f"--temp-dir={temp_dir}", "--disable-usage-stats", *own_ports],
        env=head_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        wait_for_port("127.0.0.1", dash_port, timeout=90, proc=head)
        yield RayHead(gcs=f"127.0.0.1:{gcs_port}", dashboard=f"http://127.0.0.1:{dash_port}", home=home)
    finally:
        _stop(head)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop(head: subprocess.Popen) -> None:
    """SIGTERM to the head's process group (Ray stops its processes), SIGKILL after 30 s."""
    try:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(30)
    except ProcessLookupError:
        pass  # the head and its group are gone already
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
