"""One SSH connection to a simulated device: authentication, exec, shell, faults.

Faults (``SimDevice.fault``) and what a client sees:

- ``wrong_password``: every password (and key) is rejected.
- ``host_key_change``: every connection is served with a freshly generated host key.
- ``stall``: an export sends part of its output, then nothing, the connection stays open.
- ``disconnect``: an export sends part of its output, then the TCP connection is dropped.
- ``empty``: an export prints nothing, exit status 0.
- ``non_config``: an export prints an error or a colourful banner, not a configuration.
- ``garbage``: an export prints random binary bytes.
- ``huge``: an export streams ``huge_bytes`` of configuration-like lines.
- ``silent`` / ``refuse``: handled by the server (no SSH banner / no listener).

Output faults apply to export commands only, so version detection still works.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from collections.abc import Callable

import paramiko

from ray_backup.simulator.commands import Reply, respond
from ray_backup.simulator.device import OUTPUT_FAULTS, SimDevice

# RouterOS' SSH server identifies itself so.
SERVER_VERSION = "SSH-2.0-ROSSSH"
_POLL = 0.25  # seconds between checks for a stop or a closed channel
_CHUNK = 64 * 1024
_TERMINAL_OPTIONS = re.compile(r"(.+)\+[a-z0-9]*")


def login_name(username: str) -> str:
    """``admin+ct200w`` → ``admin``: RouterOS reads terminal options after a ``+``."""
    found = _TERMINAL_OPTIONS.fullmatch(username)
    return found.group(1) if found else username


class SessionServer(paramiko.ServerInterface):
    """Paramiko's callbacks for one connection (they run in the transport thread)."""

    def __init__(self, device: SimDevice, count: Callable[..., None]) -> None:
        self.device = device
        self.count = count
        self.username = device.username
        self._requests: dict[int, tuple[str, str]] = {}
        self._cv = threading.Condition()

    def get_allowed_auths(self, username: str) -> str:
        return "publickey,password" if self.device.authorized_key else "password"

    def check_auth_password(self, username: str, password: str) -> int:
        return self._auth(username, self.device.accepts_password(login_name(username), password))

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        return self._auth(username, self.device.accepts_key(login_name(username), key))

    def _auth(self, username: str, ok: bool) -> int:
        if ok:
            self.username = login_name(username)
            return paramiko.AUTH_SUCCESSFUL
        self.count("auth_failures")
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        self._request(channel, "exec", command.decode("utf-8", "replace"))
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        self._request(channel, "shell", "")
        return True

    def check_channel_pty_request(self, *args: object) -> bool:
        return True

    def check_channel_window_change_request(self, *args: object) -> bool:
        return True

    def _request(self, channel: paramiko.Channel, kind: str, command: str) -> None:
        with self._cv:
            self._requests[channel.get_id()] = (kind, command)
            self._cv.notify_all()

    def wait_request(self, channel: paramiko.Channel, timeout: float) -> tuple[str, str] | None:
        with self._cv:
            self._cv.wait_for(lambda: channel.get_id() in self._requests or channel.closed, timeout)
            return self._requests.pop(channel.get_id(), None)


class Session:
    """Serves the channels of one authenticated transport, one after another."""

    def __init__(
        self,
        transport: paramiko.Transport,
        server: SessionServer,
        stopping: threading.Event,
        count: Callable[..., None],
    ) -> None:
        self.transport = transport
        self.server = server
        self.device = server.device
        self.stopping = stopping
        self.count = count

    def run(self) -> None:
        while self.transport.is_active() and not self.stopping.is_set():
            channel = self.transport.accept(timeout=_POLL)
            if channel is None:
                continue
            request = self.server.wait_request(channel, timeout=10)
            if request is None:
                channel.close()
            elif request[0] == "exec":
                self._exec(channel, request[1])
            else:
                self._shell(channel)

    # -- exec ------------------------------------------------------------------

    def _exec(self, channel: paramiko.Channel, command: str) -> None:
        # Counted from request to exit status: strictly inside the client's session,
        # unlike the connection count, which lags until this thread sees the close.
        self.count("active_commands")
        try:
            if self._answer(channel, command):
                channel.send_exit_status(0)
                channel.close()
        finally:
            self.count("active_commands", -1)

    def _answer(self, channel: paramiko.Channel, command: str) -> bool:
        """Run one command; False when a fault left the channel unusable."""
        if self._wait("all"):
            return False
        reply = respond(self.device, command)
        if reply.is_export and self._wait("export"):
            return False
        self.count("commands")
        if reply.is_export:
            self.device.note_export()
            self.count("exports")
            fault = self.device.fault
            if fault in OUTPUT_FAULTS:
                return self._fault(channel, fault, reply)
        self._send(channel, reply.data)
        return True

    def _wait(self, scope: str) -> bool:
        """Sleep the device's delay if it applies to ``scope``; True when stopping."""
        device = self.device
        return bool(device.delay) and device.delay_applies_to == scope and self.stopping.wait(
            device.delay
        )

    def _fault(self, channel: paramiko.Channel, fault: str, reply: Reply) -> bool:
        if fault == "empty":
            return True
        if fault == "non_config":
            self._send(channel, non_config_text(self.device))
            return True
        if fault == "garbage":
            self._send(channel, os.urandom(16 * 1024))
            return True
        if fault == "huge":
            self._stream_huge(channel, reply.data)
            return True
        self._send(channel, reply.data[: max(1, len(reply.data) // 2)])
        if fault == "disconnect":
            self._drop()
        else:  # stall: keep the connection open, say nothing more
            while not (
                self.stopping.wait(_POLL) or channel.closed or not self.transport.is_active()
            ):
                pass
        return False

    def _stream_huge(self, channel: paramiko.Channel, head: bytes) -> None:
        self._send(channel, head)
        chunk = _huge_chunk()
        sent = len(head)
        while sent < self.device.huge_bytes and not self.stopping.is_set():
            self._send(channel, chunk)
            sent += len(chunk)

    def _drop(self) -> None:
        sock = self.transport.sock
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.transport.close()

    def _send(self, channel: paramiko.Channel, data: bytes) -> None:
        if data:
            channel.sendall(data)
            self.count("bytes_sent", len(data))

    # -- interactive shell -----------------------------------------------------

    def _shell(self, channel: paramiko.Channel) -> None:
        prompt = f"[{self.server.username}@{self.device.name}] > ".encode()
        self._send(channel, banner(self.device) + prompt)
        channel.settimeout(_POLL)
        line, previous = bytearray(), b""
        while not self.stopping.is_set() and not channel.closed:
            try:
                data = channel.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            for byte in data:
                char = bytes([byte])
                if char == b"\n" and previous == b"\r":
                    previous = char
                    continue
                previous = char
                if char in (b"\r", b"\n"):
                    channel.settimeout(None)
                    self._send(channel, b"\r\n")
                    command = line.decode("utf-8", "replace")
                    line.clear()
                    if not self._shell_command(channel, command, prompt):
                        return
                    channel.settimeout(_POLL)
                elif char in (b"\x7f", b"\x08"):
                    if line:
                        line.pop()
                        self._send(channel, b"\x08 \x08")
                else:
                    line += char
                    self._send(channel, char)  # a terminal echoes what is typed

    def _shell_command(self, channel: paramiko.Channel, command: str, prompt: bytes) -> bool:
        if command.strip() in ("quit", "/quit"):
            self._send(channel, b"interrupted\r\n")
            channel.send_exit_status(0)
            channel.close()
            return False
        if not self._answer(channel, command):
            return False
        self._send(channel, prompt)
        return True


def banner(device: SimDevice) -> bytes:
    """The login banner RouterOS prints before the first prompt."""
    year = 2023 if device.major < 7 else 2024
    scheme = "http" if device.major < 7 else "https"
    logo = "\r\n".join(_LOGO)
    return (
        f"\r\n\r\n\r\n{logo}\r\n\r\n"
        f"  MikroTik RouterOS {device.routeros_version} (c) 1999-{year}       "
        f"{scheme}://www.mikrotik.com/\r\n\r\nPress F1 for help\r\n\r\n"
    ).encode()


def non_config_text(device: SimDevice) -> bytes:
    """Something that is not a configuration: an error, or (one device in two) the
    colourful banner and terminal probes a device prints when it wants a terminal."""
    if hashlib.sha256(device.id.encode()).digest()[0] % 2 == 0:
        return b"bad command name export (line 1 column 2)\r\n"
    coloured = banner(device).replace(b"MMM", b"\x1b[1;31mMMM\x1b[0m")
    return b"\x1b[?25l\x1b[9999B\x1b[6n" + coloured + f"[admin@{device.name}] > ".encode()


def _huge_chunk() -> bytes:
    """64 KiB of export-looking lines, built once."""
    global _HUGE_CHUNK
    if _HUGE_CHUNK is None:
        lines, size, i = [], 0, 0
        while size < _CHUNK:
            line = f"add address=10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} list=huge-{i}\r\n"
            lines.append(line)
            size += len(line)
            i += 1
        _HUGE_CHUNK = "".join(lines).encode()
    return _HUGE_CHUNK


_HUGE_CHUNK: bytes | None = None

_LOGO = (
    "  MMM      MMM       KKK                          TTTTTTTTTTT      KKK",
    "  MMMM    MMMM       KKK                          TTTTTTTTTTT      KKK",
    "  MMM MMMM MMM  III  KKK  KKK  RRRRRR     OOOOOO      TTT     III  KKK  KKK",
    "  MMM  MM  MMM  III  KKKKK     RRR  RRR  OOO  OOO     TTT     III  KKKKK",
    "  MMM      MMM  III  KKK KKK   RRRRRR    OOO  OOO     TTT     III  KKK KKK",
    "  MMM      MMM  III  KKK  KKK  RRR  RRR   OOOOOO      TTT     III  KKK  KKK",
)
