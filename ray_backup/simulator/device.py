"""One simulated RouterOS device: identity, credentials, configuration, fault.

The configuration starts from a real capture (``captures.py``), gets the
device's identity and secrets that tests can search for (``SIMSECRET-…``), and
can be changed at run time (``set_config``, ``mutate``) so that the next export
differs. All methods are safe to call from any thread.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import threading
import uuid
from collections.abc import Sequence

import paramiko

from ray_backup.simulator import rosconfig
from ray_backup.simulator.captures import Capture, capture_for_version, load_capture

# Faults a device can be given; see the module docstring of session.py for what each does.
FAULTS = (
    "wrong_password",
    "host_key_change",
    "stall",
    "disconnect",
    "empty",
    "non_config",
    "garbage",
    "huge",
    "silent",
    "refuse",
)
# Faults that change what an export command prints (other commands answer normally).
OUTPUT_FAULTS = frozenset({"stall", "disconnect", "empty", "non_config", "garbage", "huge"})
# What ``delay`` applies to: every command line ("all", also each line typed into the
# shell, empty ones included), or only exports ("export", as a real device, which answers
# prompts at once and takes its time building the export). Tools that type several lines
# per backup (Netmiko's prompt probes) wait once per line under "all".
DELAY_SCOPES = ("all", "export")

# Rendered bodies up to this size are kept per device; bigger ones are rebuilt per
# request so a fleet of large configurations does not hold them all twice.
_CACHE_LIMIT = 256 * 1024


def secret_marker(device_id: str) -> str:
    """The string every secret of this device contains, for leak searches."""
    return f"SIMSECRET-{device_id[:8]}"


@dataclasses.dataclass(eq=False)
class SimDevice:
    """A simulated device. ``port`` is filled in by ``Simulator.start()``."""

    id: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    name: str = "MikroTik"
    username: str = "admin"
    password: str = dataclasses.field(default="admin", repr=False)
    routeros_version: str = "7.16"
    capture: str | None = None  # None: chosen from routeros_version
    config_lines: Sequence[str] = dataclasses.field(default=(), repr=False)
    delay: float = 0.0  # seconds before answering each command (see delay_applies_to)
    delay_applies_to: str = "all"  # one of DELAY_SCOPES
    fault: str | None = None  # one of FAULTS
    host: str | None = None  # own loopback address; None: the simulator's
    port: int = 0  # 0: the OS (or the simulator's base_port) picks it
    authorized_key: str | None = dataclasses.field(default=None, repr=False)  # "ssh-ed25519 AAAA…"
    huge_bytes: int = 64 * 1024 * 1024  # how much the "huge" fault streams

    _lock: threading.RLock = dataclasses.field(
        default_factory=threading.RLock, init=False, repr=False
    )
    _host_key: paramiko.PKey | None = dataclasses.field(default=None, init=False, repr=False)
    _entries: list[str] | None = dataclasses.field(default=None, init=False, repr=False)
    _rendered: dict[str, bytes] = dataclasses.field(default_factory=dict, init=False, repr=False)
    mutations: int = dataclasses.field(default=0, init=False)
    exports_served: int = dataclasses.field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {FAULTS}")
        if self.delay_applies_to not in DELAY_SCOPES:
            raise ValueError(
                f"unknown delay scope {self.delay_applies_to!r}; expected one of {DELAY_SCOPES}"
            )

    # -- identity and keys -------------------------------------------------------

    @property
    def major(self) -> int:
        return (rosconfig.parse_version(self.routeros_version) or (7,))[0]

    @property
    def base(self) -> Capture:
        return load_capture(self.capture or capture_for_version(self.routeros_version))

    @property
    def secret(self) -> str:
        return secret_marker(self.id)

    @property
    def host_key(self) -> paramiko.PKey:
        with self._lock:
            if self._host_key is None:
                # ECDSA: generating 1,000 RSA keys would take minutes.
                self._host_key = paramiko.ECDSAKey.generate()
            return self._host_key

    def rotate_host_key(self) -> paramiko.PKey:
        """Replace the host key (as after a reset); returns the new one."""
        with self._lock:
            self._host_key = paramiko.ECDSAKey.generate()
            return self._host_key

    @property
    def host_key_fingerprint(self) -> str:
        """``SHA256:…`` as ``ssh-keygen -lf`` prints it."""
        digest = hashlib.sha256(self.host_key.asbytes()).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    def accepts_password(self, username: str, password: str) -> bool:
        if self.fault == "wrong_password":
            return False
        return username == self.username and hmac.compare_digest(
            password.encode(), self.password.encode()
        )

    def accepts_key(self, username: str, key: paramiko.PKey) -> bool:
        if self.fault == "wrong_password" or not self.authorized_key or username != self.username:
            return False
        kind, _, blob = self.authorized_key.strip().partition(" ")
        return key.get_name() == kind and key.get_base64() == blob.split(" ")[0]

    # -- configuration -----------------------------------------------------------

    def export_bytes(self, *, sensitive: bool, terse: bool = False) -> bytes:
        """The full export as the device prints it over SSH: a header with the
        current date, then the configuration, CRLF line endings."""
        now = dt.datetime.now().replace(microsecond=0)
        head = rosconfig.header(self.routeros_version, self._header_fields(), now)
        body = self._body(sensitive=sensitive, terse=terse)
        return ("\r\n".join(head) + "\r\n").encode() + body

    def config_text(self, *, sensitive: bool = True) -> str:
        """The configuration without the header, LF line endings (for assertions)."""
        return self._body(sensitive=sensitive, terse=False).decode().replace("\r\n", "\n")

    def set_config(self, text: str) -> None:
        """Replace the configuration (an export, with or without its header)."""
        entries = rosconfig.split_entries(rosconfig.strip_header(text))
        with self._lock:
            self._entries = entries
            self._rendered.clear()

    def reset_config(self) -> None:
        """Forget run-time changes: rebuild from the capture and ``config_lines``."""
        with self._lock:
            self._entries = None
            self._rendered.clear()

    def mutate(self) -> int:
        """Change the configuration so the next export differs: adds an address
        commented ``changed-N``. Returns N."""
        with self._lock:
            entries = self._config()
            self.mutations += 1
            n = self.mutations
            address = f"172.16.{(n >> 8) & 255}.{n & 255}"
            rosconfig.insert_lines(
                entries,
                "/ip address",
                [
                    f"add address={address}/32 comment=changed-{n} interface=ether1 network={address}"
                ],
            )
            self._rendered.clear()
            return n

    def note_export(self) -> None:
        with self._lock:
            self.exports_served += 1

    def _header_fields(self) -> dict[str, str]:
        fields = dict(self.base.header_fields)
        digest = hashlib.sha256(self.id.encode()).hexdigest().upper()
        if "software id" in fields:
            fields["software id"] = f"{digest[:4]}-{digest[4:8]}"
        if "serial number" in fields:
            fields["serial number"] = digest[8:20]
        return fields

    def _body(self, *, sensitive: bool, terse: bool) -> bytes:
        key = f"{sensitive}/{terse}"
        with self._lock:
            cached = self._rendered.get(key)
            if cached is not None:
                return cached
            entries = self._config()
            if not sensitive:
                entries = [rosconfig.hide_sensitive(entry) for entry in entries]
            if terse:
                entries = rosconfig.terse(entries)
            data = ("\n".join(entries).replace("\n", "\r\n") + "\r\n").encode()
            if len(data) <= _CACHE_LIMIT:
                self._rendered[key] = data
            return data

    def _config(self) -> list[str]:
        with self._lock:
            if self._entries is None:
                self._entries = self._initial_config()
            return self._entries

    def _initial_config(self) -> list[str]:
        entries = list(self.base.body)
        identity = f"set name={rosconfig.quote(self.name)}"
        has_identity = rosconfig.replace_property(entries, "/system identity", "name", self.name)
        if not has_identity and self.name != "MikroTik":  # RouterOS omits the default identity
            rosconfig.insert_lines(entries, "/system identity", [identity])
        rosconfig.replace_property(
            entries,
            "/interface wireless security-profiles",
            "wpa2-pre-shared-key",
            f"{self.secret}-wifi",
        )
        rosconfig.insert_lines(
            entries,
            "/ppp secret",
            [f"add name=sim-{self.id[:8]} password={self.secret} service=pppoe"],
        )
        rosconfig.add_sections(entries, self.config_lines)
        return entries
