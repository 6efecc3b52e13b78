"""Many simulated RouterOS devices served from one process, on loopback only.

Each device listens on its own port (or its own 127.0.0.0/8 address). One accept
thread watches every listening socket with ``selectors``; each connection gets a
paramiko ``Transport`` (its own thread) and a thread that serves its channels.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import paramiko

from ray_backup.simulator.device import SimDevice
from ray_backup.simulator.session import SERVER_VERSION, Session, SessionServer

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger(__name__)
# Paramiko logs every client that hangs up abruptly as an error; clients and faults
# do that on purpose, so its records go to a logger of their own, minus those.
PARAMIKO_LOGGER = "ray_backup.simulator.paramiko"
_BACKLOG = 128
_JOIN_TIMEOUT = 5.0


class _HangUpFilter(logging.Filter):
    """Drops paramiko's reports of a client hanging up (``Socket exception`` and
    ``Exception (server)`` with its traceback, one record per line); a traceback
    after anything else, such as ``Unknown exception``, still gets through."""

    _HANG_UP = re.compile(r"Socket exception|Exception \(server\)")
    _TRACEBACK = re.compile(r"Traceback |\s|[\w.]*(Error|Exception)\b")

    def __init__(self) -> None:
        super().__init__()
        self._quiet: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if self._HANG_UP.match(message):
            self._quiet.add(record.thread or 0)
            return False
        if record.thread in self._quiet and self._TRACEBACK.match(message):
            return False
        self._quiet.discard(record.thread or 0)
        return True


logging.getLogger(PARAMIKO_LOGGER).addFilter(_HangUpFilter())


@dataclasses.dataclass(frozen=True)
class SimStats:
    """Counters since ``start()``. ``bytes_sent`` counts channel payload, not SSH framing."""

    connections: int = 0
    active_connections: int = 0
    peak_active_connections: int = 0  # most SSH connections open at once
    active_commands: int = 0
    peak_active_commands: int = 0  # most exec commands running at once
    handshake_failures: int = 0
    auth_failures: int = 0
    commands: int = 0
    exports: int = 0
    bytes_sent: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


class Simulator:
    """Serves ``devices`` over SSH until ``stop()``; also a context manager.

    Ports: a device's preset ``port``, else ``base_port + index`` when ``base_port``
    is given, else one the OS picks. ``start()`` writes the port into each device.
    """

    def __init__(
        self, devices: Iterable[SimDevice], host: str = "127.0.0.1", *, base_port: int = 0
    ):
        self.devices = list(devices)
        self.host = host
        self.base_port = base_port
        self._by_id = {device.id: device for device in self.devices}
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._silent: set[socket.socket] = set()
        self._transports: set[paramiko.Transport] = set()
        self._threads: set[threading.Thread] = set()
        self._selector: selectors.BaseSelector | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._accept_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> Self:
        if self._accept_thread is not None:
            raise RuntimeError("simulator already started")
        _raise_fd_limit(len(self.devices) * 2 + 256)
        self._stopping.clear()
        self._counts = {}
        self._selector = selectors.DefaultSelector()
        self._wake = socket.socketpair()
        self._selector.register(self._wake[0], selectors.EVENT_READ, ("wake", None))
        try:
            for index, device in enumerate(self.devices):
                self._bind(index, device)
        except BaseException:
            self._close_sockets()
            raise
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name="sim-accept", daemon=True
        )
        self._accept_thread.start()
        return self

    def stop(self) -> None:
        """Close every socket and connection and join every thread started."""
        if self._accept_thread is None:
            return
        self._stopping.set()
        assert self._wake is not None
        self._wake[1].send(b"x")
        self._accept_thread.join(_JOIN_TIMEOUT)
        self._accept_thread = None
        self._close_sockets()
        with self._lock:
            transports, threads = list(self._transports), list(self._threads)
        for transport in transports:
            transport.close()
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for thread in [*threads, *transports]:
            if thread.is_alive():  # a transport may never have been started
                thread.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in [*threads, *transports] if t.is_alive()]
        if left:
            log.warning("simulator threads still running after stop: %s", left)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ---------------------------------------------------------------

    def device(self, device_id: str) -> SimDevice:
        return self._by_id[device_id]

    @property
    def stats(self) -> SimStats:
        with self._lock:
            return SimStats(**self._counts)

    @staticmethod
    def cpu_seconds() -> float:
        """CPU time of this whole process (all threads), as ``time.process_time()``."""
        return time.process_time()

    # -- internals ----------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n
            if name in ("active_connections", "active_commands"):
                peak = f"peak_{name}"
                self._counts[peak] = max(self._counts.get(peak, 0), self._counts[name])

    def _bind(self, index: int, device: SimDevice) -> None:
        host = device.host or self.host
        address = ipaddress.ip_address(host)
        if not address.is_loopback:
            raise ValueError(f"the simulator serves loopback addresses only, not {host}")
        port = device.port or (self.base_port + index if self.base_port else 0)
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        self._sockets.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(
                exc.errno, f"device {device.id}: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        device.host, device.port = host, sock.getsockname()[1]
        if device.fault == "refuse":
            return  # bound, never listening: the port is reserved and refuses connections
        sock.listen(_BACKLOG)
        sock.setblocking(False)
        assert self._selector is not None
        self._selector.register(sock, selectors.EVENT_READ, ("listen", device))

    def _close_sockets(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for sock in [*self._sockets, *self._silent, *(self._wake or ())]:
            sock.close()
        self._sockets, self._silent, self._wake = [], set(), None

    def _accept_loop(self) -> None:
        assert self._selector is not None
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=1.0):
                kind, device = key.data
                try:
                    if kind == "listen":
                        self._accept(key.fileobj, device)
                    elif kind == "silent":
                        self._drain_silent(key.fileobj)
                    else:
                        key.fileobj.recv(64)
                except Exception:  # one bad socket must not stop the fleet
                    log.exception(
                        "simulator accept loop error (device %s)", getattr(device, "id", "-")
                    )

    def _accept(self, listener: socket.socket, device: SimDevice) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            self._count("connections")
            if device.fault == "silent":
                # Accepted, never answered: no banner, no thread; drained until the client leaves.
                conn.setblocking(False)
                self._silent.add(conn)
                assert self._selector is not None
                self._selector.register(conn, selectors.EVENT_READ, ("silent", device))
                continue
            conn.setblocking(True)
            thread = threading.Thread(
                target=self._serve, args=(conn, device), name=f"sim-conn-{device.port}", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _drain_silent(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:
            assert self._selector is not None
            self._selector.unregister(conn)
            self._silent.discard(conn)
            conn.close()

    def _serve(self, conn: socket.socket, device: SimDevice) -> None:
        transport = None
        self._count("active_connections")
        try:
            transport = self._transport(conn, device)
            server = SessionServer(device, self._count)
            try:
                transport.start_server(server=server)
            except (paramiko.SSHException, EOFError, OSError):
                self._count("handshake_failures")
                return
            Session(transport, server, self._stopping, self._count).run()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            log.debug("device %s: connection ended: %s", device.id, exc)
        except Exception:
            log.exception("device %s: simulator session failed", device.id)
        finally:
            if transport is not None:
                transport.close()  # does not wait for the transport's thread
                if transport.is_alive():
                    transport.join(_JOIN_TIMEOUT)
            conn.close()
            self._count("active_connections", -1)
            with self._lock:
                self._threads.discard(threading.current_thread())
                if transport is not None:
                    self._transports.discard(transport)

    def _transport(self, conn: socket.socket, device: SimDevice) -> paramiko.Transport:
        transport = paramiko.Transport(conn)
        transport.local_version = SERVER_VERSION
        transport.name = f"sim-ssh-{device.port}"
        transport.set_log_channel(PARAMIKO_LOGGER)
        key = device.rotate_host_key() if device.fault == "host_key_change" else device.host_key
        transport.add_server_key(key)
        with self._lock:
            if self._stopping.is_set():
                raise EOFError("simulator stopping")
            self._transports.add(transport)
        return transport


def _raise_fd_limit(needed: int) -> None:
    """A thousand listening sockets exceed the common soft limit of 1,024 descriptors."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
