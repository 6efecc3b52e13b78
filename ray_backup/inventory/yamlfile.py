"""A YAML file inventory, for single jobs and laptops without a database.

::

    devices:
      - id: 7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51   # required UUID
        host: 127.0.0.1                          # IPv4/IPv6 address or DNS name
        port: 2201                               # default 22
        username: admin
        password: secret                         # or key_file: /path/to/key

Secrecy: a ``Device`` built here carries a ``CredentialRef`` that names this
file and the username, never the password; the credentials resolver reads the
password from the file, by device id, in the process that logs in. So the
password never travels through Ray.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ray_backup.errors import ConfigError, UnknownDevice
from ray_backup.inventory.base import Inventory, row_error
from ray_backup.inventory.fields import (
    DEFAULT_TENANT,
    optional_text,
    parse_fingerprint,
    parse_flag,
    parse_host,
    parse_port,
    parse_uuid,
    shown,
)
from ray_backup.inventory.hostkeys import HostKeyFile
from ray_backup.models import CredentialRef, Credentials, Device, secret_digest

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

FIELDS = frozenset({
    "id", "tenant_id", "hostname", "host", "port", "username", "password", "key_file",
    "routeros_version", "ssh_host_key_fingerprint", "driver", "ssh_legacy_algorithms",
})


@dataclass(repr=False)
class ParsedInventory:
    """Rows of one file: devices, one error per rejected row, and the passwords by id."""

    devices: list[Device] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    passwords: dict[str, str | None] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"ParsedInventory(devices={len(self.devices)}, errors={len(self.errors)})"


def hostkeys_path(inventory_path: str | os.PathLike) -> Path:
    return Path(f"{os.path.abspath(inventory_path)}.hostkeys.json")


def read_inventory_file(path: str | os.PathLike) -> ParsedInventory:
    """Read and parse ``path``; a file that cannot be used at all is a ``ConfigError``."""
    path = os.path.abspath(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read inventory file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: inventory file is not UTF-8 text") from None
    data, lines = load_yaml(text, path)
    return parse_inventory(data, path, lines)


def load_yaml(text: str, path: str) -> tuple[Any, list[int]]:
    """The document and the line of each ``devices`` row; errors name the line."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{path}:{where}: not valid YAML ({problem})") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # e.g. `2024-02-30` resolves to a timestamp that does not exist
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__}: {exc})"[:300]) from None
    finally:
        loader.dispose()
    return data, _row_lines(node)


def _row_lines(node: Any) -> list[int]:
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == "devices" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def parse_inventory(data: Any, path: str, lines: list[int] | None = None) -> ParsedInventory:
    """Turn a loaded document into devices; bad rows become error lines, never exceptions."""
    if data is None:
        raise ConfigError(f"{path}: inventory file is empty (expected a 'devices:' list)")
    if not isinstance(data, dict) or "devices" not in data:
        raise ConfigError(f"{path}: inventory must be a mapping with a 'devices:' list")
    extra = sorted(shown(k, 40) for k in data if k != "devices")
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s): {', '.join(extra)}")
    rows = data["devices"] or []
    if not isinstance(rows, list):
        raise ConfigError(f"{path}: 'devices' must be a list, got {type(rows).__name__}")
    parsed = ParsedInventory()
    first_row: dict[str, int] = {}
    base_dir = os.path.dirname(path)
    for index, raw in enumerate(rows, start=1):
        line = lines[index - 1] if lines and index <= len(lines) else None
        raw_id = raw.get("id") if isinstance(raw, dict) else None
        try:
            device, password = parse_row(raw, path, base_dir)
        except ValueError as exc:
            parsed.errors.append(_error(index, raw_id, str(exc), line))
            continue
        if device.id in first_row:
            problem = f"duplicate id (first used in row {first_row[device.id]}); row ignored"
            parsed.errors.append(_error(index, device.id, problem, line))
            continue
        first_row[device.id] = index
        parsed.devices.append(device)
        parsed.passwords[device.id] = password
    return parsed


def _error(index: int, device_id: Any, problem: str, line: int | None) -> str:
    suffix = f" (line {line})" if line else ""
    return row_error(index, device_id, problem) + suffix


def parse_row(raw: Any, path: str, base_dir: str) -> tuple[Device, str | None]:
    """One row as a ``Device`` and its password; ``ValueError`` lists every problem."""
    if not isinstance(raw, dict):
        raise ValueError(f"row must be a mapping of fields, got {shown(raw)}")
    problems: list[str] = []

    def check(parse, *args):
        try:
            return parse(*args)
        except ValueError as exc:
            problems.append(str(exc))
            return None

    unknown = sorted(shown(k, 40) for k in raw if k not in FIELDS)
    if unknown:
        problems.append(f"unknown field(s): {', '.join(unknown)}")
    device_id = check(parse_uuid, raw.get("id"), "id")
    tenant = raw.get("tenant_id")
    tenant_id = check(parse_uuid, DEFAULT_TENANT if tenant in (None, "") else tenant, "tenant_id")
    host = check(parse_host, raw.get("host"))
    port = check(parse_port, raw.get("port"))
    username, password, key_file = check(_login, raw, base_dir) or (None, None, None)
    hostname = check(optional_text, raw.get("hostname"), "hostname")
    version = check(optional_text, raw.get("routeros_version"), "routeros_version")
    pinned = check(parse_fingerprint, raw.get("ssh_host_key_fingerprint"))
    driver = check(optional_text, raw.get("driver"), "driver") or "routeros"
    legacy = check(parse_flag, raw.get("ssh_legacy_algorithms"), "ssh_legacy_algorithms")
    if problems:
        raise ValueError("; ".join(problems))
    ref = CredentialRef(
        inventory_file=path,
        username=username,
        key_file=key_file,
        digest=secret_digest(device_id, username, password, key_file),
    )
    device = Device(
        id=device_id, host=host, port=port, tenant_id=tenant_id, hostname=hostname,
        routeros_version=version, host_key_fingerprint=pinned, credentials=ref, driver=driver,
        ssh_legacy_algorithms=legacy,
    )
    return device, password


def _login(raw: dict, base_dir: str) -> tuple[str, str | None, str | None]:
    username, password, key_file = raw.get("username"), raw.get("password"), raw.get("key_file")
    problems = []
    if not isinstance(username, str) or not username.strip():
        problems.append(
            "username is missing" if username is None else "username must be a non-empty string"
        )
    if password is not None and not isinstance(password, str):
        # Never quote it; and 0123 in YAML would silently become 83.
        problems.append("password must be a string (quote it in YAML)")
    if key_file is not None and (not isinstance(key_file, str) or not key_file.strip()):
        problems.append(f"key_file must be a path, got {shown(key_file)}")
    elif key_file is not None:
        key_file = os.path.abspath(os.path.join(base_dir, os.path.expanduser(key_file.strip())))
        if not os.path.isfile(key_file):
            problems.append(f"key_file {key_file!r} does not exist")
    if password is None and key_file is None and not problems:
        problems.append("password or key_file is missing")
    if problems:
        raise ValueError("; ".join(problems))
    return username.strip(), password, key_file


class YamlInventory:
    """A YAML inventory file plus its host key sidecar; re-read only when changed."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.path.abspath(path)
        self.hostkeys = HostKeyFile(hostkeys_path(self.path))
        self._lock = threading.Lock()
        self._parsed: tuple[tuple[int, ...], ParsedInventory] | None = None
        self._merged: tuple[tuple, Inventory] | None = None

    def __repr__(self) -> str:
        return f"YamlInventory({self.path!r})"

    def load(self) -> Inventory:
        with self._lock:
            parsed = self._parse()
            stamp = (self._parsed[0], self.hostkeys.stamp())
            if not self._merged or self._merged[0] != stamp:
                self._merged = (stamp, self._merge(parsed))
            found = self._merged[1]
        return Inventory(devices=list(found.devices), errors=list(found.errors))

    def _parse(self) -> ParsedInventory:
        stamp = _stamp(self.path)
        if self._parsed and self._parsed[0] == stamp:
            return self._parsed[1]
        parsed = read_inventory_file(self.path)
        self._parsed = (stamp, parsed)
        return parsed

    def _merge(self, parsed: ParsedInventory) -> Inventory:
        """Stored first-use keys fill in; a fingerprint pinned in the YAML wins."""
        stored = self.hostkeys.fingerprints()
        devices = [
            dataclasses.replace(d, host_key_fingerprint=stored[d.id])
            if d.host_key_fingerprint is None and d.id in stored else d
            for d in parsed.devices
        ]
        return Inventory(devices=devices, errors=list(parsed.errors))

    def record_host_key(self, device_id: str, fingerprint: str) -> bool:
        return self.hostkeys.record(parse_uuid(device_id), fingerprint)

    def mark_verified(self, device_id: str) -> None:
        self.hostkeys.touch(parse_uuid(device_id))

    def reset_host_key(self, device_id: str) -> bool:
        device_id = parse_uuid(device_id)
        if device_id not in self.hostkeys.fingerprints():
            self._sidecar_row(device_id)  # unknown, or pinned in the file: say so
        return self.hostkeys.reset(device_id)

    def accept_host_key(self, device_id: str, fingerprint: str) -> None:
        device_id = parse_uuid(device_id)
        self._sidecar_row(device_id)
        self.hostkeys.accept(device_id, parse_fingerprint(fingerprint))

    def _sidecar_row(self, device_id: str) -> None:
        """Check that ``device_id`` is a row whose key lives in the sidecar."""
        with self._lock:
            parsed = self._parse()
        row = next((d for d in parsed.devices if d.id == device_id), None)
        if row is None:
            raise UnknownDevice(f"device {device_id} is not in {self.path}")
        if row.host_key_fingerprint is not None:
            raise ConfigError(
                f"device {device_id}: its host key is pinned in {self.path} "
                f"(ssh_host_key_fingerprint); change it there"
            )

    def close(self) -> None:
        self._parsed = self._merged = None


def load_secrets(path: str | os.PathLike) -> dict[str, Credentials]:
    """Every valid row's login, by device id: for the credentials resolver only."""
    parsed = read_inventory_file(path)
    return {
        d.id: Credentials(
            username=d.credentials.username or "",
            password=parsed.passwords.get(d.id),
            key_file=d.credentials.key_file,
        )
        for d in parsed.devices
    }


def _stamp(path: str) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: inventory file does not exist") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read inventory file ({exc.strerror})") from None
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_ctime_ns)
