"""An SSH server we did not write (asyncssh's), answering as a RouterOS device on loopback.

The simulator shares paramiko with the client, so it cannot show that the client gets
along with anyone else. This server runs asyncssh in its own event loop thread, in one
of two profiles: ``MODERN`` (asyncssh's defaults, which still include some of the legacy
set, and an ed25519 host key) and ``ROUTEROS6`` (an RSA host key signed with ``ssh-rsa``
only, ``diffie-hellman-group14-sha1``, as RouterOS 6 offers). It answers the commands
the collector sends from a real capture (the simulator's copies of
/work/shared/data/routeros), re-dated to RouterOS 6 syntax for the legacy profile.

For benchmarks, an export can be padded to ``export_bytes`` and answered after
``export_delay`` seconds, and many servers can share one event loop (``loop``, run by
the caller) so that a fleet of them is one thread, not one per device.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from typing import Any

import asyncssh

from ray_backup.simulator.captures import load_capture

logging.getLogger("asyncssh").setLevel(logging.WARNING)

CAPTURE = "CHR_7.16"
V6_VERSION = "6.49.10"


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    host_key_types: tuple[str, ...]
    algorithms: dict[str, list[str]]  # create_server's kex_algs, signature_algs, ...
    version: str


MODERN = Profile("modern", ("ssh-ed25519",), {}, "7.16")
ROUTEROS6 = Profile(
    "routeros6",
    ("ssh-rsa",),
    {
        "kex_algs": ["diffie-hellman-group14-sha1", "diffie-hellman-group1-sha1"],
        "signature_algs": ["ssh-rsa"],
        "encryption_algs": ["aes128-ctr", "aes256-ctr", "aes128-cbc", "3des-cbc"],
        "mac_algs": ["hmac-sha1", "hmac-md5"],
    },
    V6_VERSION,
)

# How a session ends: "exit" sends the exit status; "no_exit_status" closes the channel
# without one; "drop" cuts the connection halfway through the export.
ENDINGS = ("exit", "no_exit_status", "drop")


class IndependentSSHServer:
    """One device. ``start()`` / ``stop()``; ``restart(host_keys)`` keeps the port."""

    def __init__(
        self,
        profile: Profile = MODERN,
        *,
        host_keys: list[asyncssh.SSHKey] | None = None,
        username: str = "admin",
        password: str | None = "secret",
        authorized_keys: str | None = None,
        algorithms: dict[str, list[str]] | None = None,
        export_delay: float = 0.0,
        export_bytes: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.profile = profile
        self.host_keys = host_keys or [asyncssh.generate_private_key(t) for t in profile.host_key_types]
        self.username = username
        self.password = password
        self.authorized_keys = authorized_keys
        self.algorithms = profile.algorithms if algorithms is None else algorithms
        self.export_delay = export_delay
        self.export_bytes = export_bytes
        self.ending = "exit"
        self.exit_status = 0
        self.port = 0
        self.connections = 0
        self.password_attempts = 0
        self.auth_failures = 0
        self.commands: list[str] = []
        self.negotiated: list[dict[str, str]] = []  # the server's view, per session
        # A loop of our own in our own thread, unless the caller shares (and runs) one.
        self._own_loop = loop is None
        self._loop = loop or asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"asyncssh-{profile.name}")
        self._acceptor: Any = None

    def __enter__(self) -> IndependentSSHServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> IndependentSSHServer:
        if self._own_loop:
            self._thread.start()
        self._acceptor = self._call(self._listen())
        self.port = self._acceptor.get_port()
        return self

    def restart(self, host_keys: list[asyncssh.SSHKey]) -> None:
        """Come back on the same port with other host keys (a reinstalled device)."""
        self._call(self._close())
        self.host_keys = host_keys
        self._acceptor = self._call(self._listen())

    def stop(self) -> None:
        if not self._own_loop:
            if self._loop.is_running():
                self._call(self._close())
            return
        if self._thread.is_alive():
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(15)

    async def _listen(self):
        extra: dict[str, Any] = dict(self.algorithms)
        if self.authorized_keys:
            extra["authorized_client_keys"] = asyncssh.import_authorized_keys(self.authorized_keys)
        keys = asyncssh.load_keypairs(self.host_keys)
        if "signature_algs" in extra:
            # asyncssh offers every algorithm a host key can sign with (rsa-sha2-512 too);
            # signature_algs narrows only client-key signatures. RouterOS 6 signs with ssh-rsa.
            allowed = {a.encode() for a in extra["signature_algs"]}
            for key in keys:
                key.host_key_algorithms = [a for a in key.host_key_algorithms if a in allowed]
        return await asyncssh.create_server(
            lambda: _DeviceServer(self), "127.0.0.1", self.port,
            server_host_keys=keys, process_factory=self._session,
            reuse_address=True, **extra,
        )

    async def _close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None

    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        conn = process.get_extra_info("connection")
        self.negotiated.append({k: conn.get_extra_info(k) for k in ("recv_cipher", "recv_mac")})
        command = process.command or ""
        self.commands.append(command)
        exporting = command.startswith("/export")
        text = reply(self.profile.version, command)
        if exporting and self.export_bytes:
            text = padded(text, self.export_bytes)
        text = text.replace("\n", "\r\n")
        if exporting and self.export_delay:
            await asyncio.sleep(self.export_delay)  # a device builds its export
        if exporting and self.ending == "drop":
            process.stdout.write(text[: len(text) // 2])
            await process.stdout.drain()
            conn.abort()
            return
        process.stdout.write(text)
        await process.stdout.drain()
        if exporting and self.ending == "no_exit_status":
            process.close()
            return
        process.exit(self.exit_status)


class _DeviceServer(asyncssh.SSHServer):
    def __init__(self, owner: IndependentSSHServer) -> None:
        self._owner = owner

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._owner.connections += 1

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return self._owner.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        self._owner.password_attempts += 1
        ok = username == self._owner.username and password == self._owner.password
        self._owner.auth_failures += not ok
        return ok


def reply(version: str, command: str) -> str:
    """What a RouterOS ``version`` device prints for ``command`` (the collector's few)."""
    capture = load_capture(CAPTURE)
    v6 = version.startswith("6.")
    if command == "/system resource print":
        return capture.commands[command].replace(f"version: {capture.version} ", f"version: {version} ")
    if command == ("/export" if v6 else "/export show-sensitive"):
        export = capture.export
        if v6:  # RouterOS 6 dates its header as mon/dd/yyyy
            header, _, body = export.partition("\n")
            export = f"# may/30/2025 11:07:28 by RouterOS {version}\n{body}"
        return export
    if v6 and command == "/export show-sensitive":
        return "expected end of command (line 1 column 9)\n"
    return f"bad command name {command.lstrip('/').split(' ')[0]} (line 1 column 2)\n"


@functools.lru_cache(maxsize=8)
def padded(export: str, size: int) -> str:
    """``export`` grown to about ``size`` bytes (CRLF) with firewall address-list entries."""
    lines = [export.rstrip("\n"), "/ip firewall address-list"]
    total = sum(len(line) + 2 for line in export.split("\n")) + len(lines[1]) + 2
    i = 0
    while total < size:
        line = f"add address=10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255} list=pad-{i // 256}"
        lines.append(line)
        total += len(line) + 2
        i += 1
    return "\n".join(lines) + "\n"
