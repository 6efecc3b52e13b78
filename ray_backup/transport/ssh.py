"""One SSH login, one or more commands, every failure classified into an error kind.

Blocking (paramiko); async callers run it in a thread. Host keys are checked
before authentication, so a password is never sent to a host whose key changed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import time
from dataclasses import dataclass

import paramiko

from ray_backup.errors import (
    AuthFailed,
    CommandTimeout,
    ConnectionRefused,
    HostKeyMismatch,
    RayBackupError,
    SSHIncompatible,
    TruncatedOutput,
    Unreachable,
)
from ray_backup.models import Credentials
from ray_backup.transport import algorithms
from ray_backup.transport.algorithms import OfferRecordingTransport

log = logging.getLogger(__name__)
logging.getLogger("paramiko").setLevel(logging.CRITICAL)

# RouterOS is known to cut exports short over small windows: ask for a large one.
WINDOW_SIZE = 64 * 1024 * 1024
MAX_PACKET_SIZE = 32768
_READ_CHUNK = 256 * 1024
_POLL_S = 0.5

# A stored fingerprint's host key type, learnt once it matched: the next session asks
# for that type first, rather than for ed25519 and then again for the stored RSA key.
# A fact about the key (not about a device), so shared by every session in the process.
_KEY_TYPES: dict[str, str] = {}
_KEY_TYPES_MAX = 100_000


@dataclass(frozen=True)
class SSHOptions:
    connect_timeout: float = 10.0
    command_timeout: float = 60.0
    max_output_bytes: int = 16 * 1024 * 1024
    # Every device may negotiate the legacy algorithms (RouterOS 6); see algorithms.py.
    legacy_algorithms: bool = False


def fingerprint(key: paramiko.PKey) -> str:
    """`ssh-keygen -lf` format: SHA256: + unpadded base64 of the key blob's SHA-256."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class SSHSession:
    """A logged-in SSH connection; use as a context manager.

    ``known_fingerprint`` None means trust on first use: the observed key's
    fingerprint is available as ``.fingerprint`` for the caller to store.
    ``legacy_algorithms`` (or ``options.legacy_algorithms``) allows the legacy
    set of ``algorithms.LEGACY``; otherwise none of it is ever negotiated.
    """

    def __init__(
        self,
        host: str,
        port: int,
        credentials: Credentials,
        known_fingerprint: str | None,
        options: SSHOptions,
        legacy_algorithms: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self._credentials = credentials
        self._known = known_fingerprint
        self.options = options
        self.legacy = legacy_algorithms or options.legacy_algorithms
        self.fingerprint: str | None = None
        self._transport: paramiko.Transport | None = None

    def __repr__(self) -> str:
        return f"SSHSession({self.host}:{self.port})"

    def __enter__(self) -> SSHSession:
        try:
            self._connect()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    @property
    def negotiated(self) -> dict[str, str]:
        """What the handshake agreed on (key exchange, host key, ciphers, MACs)."""
        assert self._transport is not None, "session is not connected"
        return algorithms.negotiated(self._transport)

    def _connect(self) -> None:
        transport = self._handshake(_KEY_TYPES.get(self._known or ""))
        self.fingerprint = fingerprint(transport.get_remote_server_key())
        if self._known and self.fingerprint != self._known:
            transport = self._stored_key_among_others(transport)
        if self._known:
            _remember_key_type(self._known, transport.host_key_type)
        self._authenticate(transport)

    def _handshake(self, key_type: str | None = None, only: bool = False) -> OfferRecordingTransport:
        """Connect and exchange keys (no authentication yet).

        ``key_type`` puts that host key type first (``only``: offers nothing else).
        """
        sock = _open_socket(self.host, self.port, self.options.connect_timeout)
        transport = OfferRecordingTransport(
            sock, default_window_size=WINDOW_SIZE, default_max_packet_size=MAX_PACKET_SIZE,
            disabled_algorithms=algorithms.disabled_algorithms(self.legacy),
        )
        self._transport = transport
        if key_type:
            security = transport.get_security_options()
            first = algorithms.algorithms_for(key_type, security.key_types)
            rest = () if only else tuple(a for a in security.key_types if a not in first)
            security.key_types = first + rest
        transport.banner_timeout = self.options.connect_timeout
        transport.handshake_timeout = self.options.connect_timeout
        transport.auth_timeout = self.options.connect_timeout
        try:
            # A little longer than the banner timeout, so a silent device reports that.
            transport.start_client(timeout=self.options.connect_timeout + 1)
        except paramiko.SSHException as exc:
            # IncompatiblePeer also reports an SSH-1 banner, before any algorithm list.
            if isinstance(exc, paramiko.IncompatiblePeer) and transport.offered is not None:
                raise SSHIncompatible(
                    algorithms.incompatibility(transport.offered, self.legacy)
                ) from None
            raise _handshake_error(exc, self.options.connect_timeout) from None
        except (EOFError, OSError) as exc:
            raise TruncatedOutput(
                f"connection closed during SSH handshake ({type(exc).__name__})"
            ) from None
        if transport.host_key is None:  # start_client returns quietly when it times out
            raise CommandTimeout(
                f"SSH handshake did not finish within {self.options.connect_timeout:g} s"
            )
        return transport

    def _stored_key_among_others(self, first: OfferRecordingTransport) -> OfferRecordingTransport:
        """The device may hold the stored key next to others (RSA, then ed25519 added):
        ask for each other host key type it offers; only the stored key is accepted,
        and nothing is sent to authenticate before it is."""
        presented = self.fingerprint
        others = algorithms.key_types_offered(
            (first.offered or {}).get("keys", []), first.preferred_keys,
            but=algorithms.key_type(first.host_key_type or ""),
        )
        self.close()
        for key_type in others:
            transport = self._handshake(key_type, only=True)
            if fingerprint(transport.get_remote_server_key()) == self._known:
                self.fingerprint = self._known
                return transport
            self.close()
        also = f" (nor any of its other host keys: {', '.join(others)})" if others else ""
        raise HostKeyMismatch(
            f"host key changed: stored {self._known}, device presented {presented}{also}"
        )

    def _authenticate(self, transport: paramiko.Transport) -> None:
        creds = self._credentials
        try:
            if creds.key_file:
                transport.auth_publickey(creds.username, paramiko.PKey.from_path(creds.key_file))
            else:
                _auth_password(transport, creds.username, creds.password or "")
        except paramiko.AuthenticationException:
            raise AuthFailed(f"authentication failed for user {creds.username!r}") from None
        except (OSError, paramiko.SSHException) as exc:
            raise _session_error(exc, "authentication") from None
        if not transport.is_authenticated():
            raise AuthFailed(f"authentication failed for user {creds.username!r}")

    def run(self, command: str) -> bytes:
        """Run one command over exec; return its output (stdout, then stderr)."""
        assert self._transport is not None, "session is not connected"
        opts = self.options
        try:
            channel = self._transport.open_session(
                window_size=WINDOW_SIZE, max_packet_size=MAX_PACKET_SIZE, timeout=opts.connect_timeout
            )
            channel.set_combine_stderr(True)
            channel.exec_command(command)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise _session_error(exc, "opening the command channel") from None
        try:
            return self._read(channel, command)
        finally:
            channel.close()

    def _read(self, channel: paramiko.Channel, command: str) -> bytes:
        opts = self.options
        deadline = time.monotonic() + opts.command_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(
                    f"{command!r} did not finish within {opts.command_timeout:g} s "
                    f"({size} bytes received)"
                )
            channel.settimeout(min(_POLL_S, remaining))
            try:
                data = channel.recv(_READ_CHUNK)
            except TimeoutError:
                continue
            except (OSError, EOFError, paramiko.SSHException):
                data = b""
            if not data:
                break
            size += len(data)
            if size > opts.max_output_bytes:
                raise TruncatedOutput(
                    f"{command!r} output exceeded the {opts.max_output_bytes} byte cap"
                )
            chunks.append(data)
        # A complete command ends with an exit status; a connection dropped mid-export
        # at a line boundary looks complete otherwise.
        # (paramiko also sets status_event on close, leaving exit_status at -1.)
        channel.status_event.wait(min(1.0, max(deadline - time.monotonic(), 0.0)))
        if channel.exit_status == -1:
            raise TruncatedOutput(f"connection lost during {command!r} after {size} bytes")
        return b"".join(chunks)


def _remember_key_type(known: str, algorithm: str | None) -> None:
    if not algorithm:
        return
    if len(_KEY_TYPES) >= _KEY_TYPES_MAX:
        _KEY_TYPES.clear()
    _KEY_TYPES[known] = algorithms.key_type(algorithm)


def _open_socket(host: str, port: int, timeout: float) -> socket.socket:
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        raise ConnectionRefused(f"connection refused by {host}:{port}") from None
    except TimeoutError:
        raise Unreachable(f"no answer from {host}:{port} within {timeout:g} s") from None
    except socket.gaierror as exc:
        raise Unreachable(f"cannot resolve {host!r}: {exc.strerror}") from None
    except OSError as exc:
        raise Unreachable(f"cannot reach {host}:{port}: {exc.strerror or exc}") from None


def _auth_password(transport: paramiko.Transport, username: str, password: str) -> None:
    try:
        transport.auth_password(username, password)
    except paramiko.BadAuthenticationType as exc:
        if "keyboard-interactive" not in exc.allowed_types:
            raise
        transport.auth_interactive(username, lambda _t, _i, prompts: [password] * len(prompts))


def _handshake_error(exc: paramiko.SSHException, timeout: float) -> RayBackupError:
    text = str(exc)
    if "banner" in text.lower():
        return CommandTimeout(f"device accepted TCP but sent no SSH banner within {timeout:g} s")
    if "timeout" in text.lower() or "timed out" in text.lower():
        return CommandTimeout(f"SSH handshake did not finish within {timeout:g} s")
    return _session_error(exc, "the SSH handshake")


def _session_error(exc: BaseException, during: str) -> RayBackupError:
    if isinstance(exc, socket.timeout) or "timed out" in str(exc).lower():
        return CommandTimeout(f"timed out during {during}")
    if isinstance(exc, (EOFError, ConnectionResetError)) or "closed" in str(exc).lower():
        return TruncatedOutput(f"connection closed during {during}")
    generic = RayBackupError(f"SSH error during {during}: {type(exc).__name__}: {exc}")
    return generic
