"""Settings: one frozen dataclass, built once from the environment and an optional file.

Precedence: built-in defaults < YAML config file < environment variables.
Names are the reference scheduler's environment variables; the config file may
use the same names or their lower-case field names. Every problem is reported
on one line naming the setting.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from ray_backup import constants as C
from ray_backup.errors import ConfigError

# Names a YAML file holding any of the settings below (the CLI's --config).
CONFIG_ENV = "RAY_BACKUP_CONFIG"


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):  # "nan" and "inf" parse, and would break every schedule
        raise ValueError("must be a finite number")
    return number


def _positive_float(value: str) -> float:
    number = _finite(value)
    if number <= 0:
        raise ValueError("must be greater than 0")
    return number


def _non_negative_float(value: str) -> float:
    number = _finite(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def _per_actor(value: str) -> int | str:
    """``auto`` (the supervisor chooses, see ``placement.auto_devices_per_actor``) or a count."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError("must be auto or a whole number greater than 0") from None


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be a whole number greater than 0")
    return number


def _port(value: str) -> int:
    number = int(value)
    if not 0 <= number <= 65535:
        raise ValueError("must be a port number from 0 to 65535")
    return number


def _encryption_key(value: str) -> str:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64") from None
    if len(raw) != 32:
        raise ValueError(f"must decode to 32 bytes, got {len(raw)}")
    return value


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _export_mode(value: str) -> str:
    if value not in {"show-sensitive", "hide-sensitive"}:
        raise ValueError("must be show-sensitive or hide-sensitive")
    return value


def _flag(value: str) -> bool:
    text = value.lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError("must be 1 or 0 (true/false, yes/no, on/off)")


def _choice(*allowed: str) -> Callable[[str], str]:
    """Case-insensitive choice among ``allowed``, returned as spelled there."""

    def parse(value: str) -> str:
        for option in allowed:
            if value.upper() == option.upper():
                return option
        raise ValueError(f"must be one of {', '.join(allowed)}")

    return parse


def _url(scheme: str, what: str) -> Callable[[str], str]:
    """A URL whose scheme matches the regex ``scheme``, with a host and a numeric port if any."""

    def parse(value: str) -> str:
        parts = urlsplit(value)
        if not re.fullmatch(scheme, parts.scheme, re.IGNORECASE):
            raise ValueError(f"must be {what}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError("has a port that is not a number from 0 to 65535") from None
        if not parts.hostname and parts.scheme != "unix":
            raise ValueError("names no host")
        return value

    return parse


_BOOTSTRAP = re.compile(r"^(?:[A-Za-z_]+://)?(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+)(?::(\d{1,5}))?$")


def _bootstrap_servers(value: str) -> str:
    for server in value.split(","):
        found = _BOOTSTRAP.match(server.strip())
        if not found or (found.group(2) and not 0 < int(found.group(2)) < 65536):
            raise ValueError("must be a comma-separated list of host:port")
    return value


_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _topic(value: str) -> str:
    if not _TOPIC.match(value) or value in (".", ".."):
        raise ValueError("must be a Kafka topic name: 1-249 of A-Z a-z 0-9 . _ -")
    return value


def _transit_key(value: str) -> str:
    try:
        value.format(tenant_id="t")
    except (KeyError, IndexError, ValueError):
        raise ValueError("may contain only {tenant_id} in braces") from None
    return value


def _text(value: str) -> str:
    return value


def _setting(env: str, default: Any, parse: Callable[[str], Any] = _text, secret: bool = False):
    return field(default=default, metadata={"env": env, "parse": parse, "secret": secret})


@dataclass(frozen=True)
class Settings:
    """Everything the job can be told; see the README's settings table."""

    database_url: str | None = _setting(
        "DATABASE_URL", None,
        # SQLAlchemy-style schemes (postgresql+asyncpg://) too, as the inventory accepts them.
        _url(r"postgres(?:ql)?(?:\+\w+)?", "a postgresql:// URL"),
        secret=True,
    )
    redis_url: str | None = _setting(
        "REDIS_URL", None, _url("rediss?|unix", "a redis://, rediss:// or unix:// URL"),
        secret=True,
    )
    redis_prefix: str = _setting("RAY_BACKUP_REDIS_PREFIX", C.DEFAULT_REDIS_PREFIX)
    kafka_bootstrap_servers: str | None = _setting(
        "KAFKA_BOOTSTRAP_SERVERS", None, _bootstrap_servers
    )
    kafka_topic: str = _setting("KAFKA_TOPIC", C.DEFAULT_TOPIC, _topic)
    changes_topic: str = _setting("RAY_BACKUP_CHANGES_TOPIC", C.DEFAULT_CHANGES_TOPIC, _topic)
    history_group: str = _setting("RAY_BACKUP_HISTORY_GROUP", C.DEFAULT_HISTORY_GROUP)
    history_writers: int = _setting("RAY_BACKUP_HISTORY_WRITERS", 2, _positive_int)
    kafka_security_protocol: str | None = _setting(
        "KAFKA_SECURITY_PROTOCOL", None, _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
    )
    kafka_sasl_mechanism: str | None = _setting(
        "KAFKA_SASL_MECHANISM", None,
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"),
    )
    kafka_sasl_username: str | None = _setting("KAFKA_SASL_USERNAME", None)
    kafka_sasl_password: str | None = _setting("KAFKA_SASL_PASSWORD", None, secret=True)
    kafka_ssl_ca_location: str | None = _setting("KAFKA_SSL_CA_LOCATION", None)
    credential_encryption_key: str | None = _setting(
        "CREDENTIAL_ENCRYPTION_KEY", None, _encryption_key, secret=True
    )
    openbao_addr: str | None = _setting(
        "OPENBAO_ADDR", None, _url("https?", "an http:// or https:// URL")
    )
    openbao_token: str | None = _setting("OPENBAO_TOKEN", None, secret=True)
    openbao_transit_mount: str = _setting("OPENBAO_TRANSIT_MOUNT", "transit")
    openbao_transit_key: str = _setting("OPENBAO_TRANSIT_KEY", "tenant_{tenant_id}", _transit_key)
    backup_interval: float = _setting("CONFIG_BACKUP_INTERVAL", 21600.0, _positive_float)
    max_concurrent: int = _setting("CONFIG_BACKUP_MAX_CONCURRENT", 10, _positive_int)
    command_timeout: float = _setting("CONFIG_BACKUP_COMMAND_TIMEOUT", 60.0, _positive_float)
    connect_timeout: float = _setting("CONFIG_BACKUP_CONNECT_TIMEOUT", 10.0, _positive_float)
    jitter_min: float = _setting("CONFIG_BACKUP_JITTER_MIN", 30.0, _non_negative_float)
    jitter_max: float = _setting("CONFIG_BACKUP_JITTER_MAX", 300.0, _non_negative_float)
    logins_per_second: float = _setting("CONFIG_BACKUP_LOGINS_PER_SECOND", 0.0, _non_negative_float)
    max_output_bytes: int = _setting("CONFIG_BACKUP_MAX_OUTPUT_BYTES", 16 * 1024 * 1024, _positive_int)
    export_mode: str = _setting("CONFIG_BACKUP_EXPORT_MODE", "show-sensitive", _export_mode)
    # Days the history keeps versions; a device's newest version is never deleted.
    config_retention_days: float = _setting("CONFIG_RETENTION_DAYS", 90.0, _positive_float)
    ssh_legacy_algorithms: bool = _setting("RAY_BACKUP_SSH_LEGACY_ALGORITHMS", False, _flag)
    device_refresh: float = _setting("DEVICE_REFRESH_SECONDS", 60.0, _positive_float)
    credential_cache_ttl: float = _setting("CREDENTIAL_CACHE_TTL", 300.0, _non_negative_float)
    log_level: str = _setting("RAY_BACKUP_LOG_LEVEL", "INFO", _log_level)
    inventory_file: str | None = _setting("RAY_BACKUP_INVENTORY", None)
    output_dir: str = _setting("RAY_BACKUP_OUTPUT_DIR", "./backups")
    spool_dir: str | None = _setting("RAY_BACKUP_SPOOL_DIR", None)
    spool_max_bytes: int = _setting("RAY_BACKUP_SPOOL_MAX_BYTES", 1024 * 1024 * 1024, _positive_int)
    metrics_port: int = _setting("RAY_BACKUP_METRICS_PORT", 9464, _port)
    devices_per_actor: int | str = _setting("RAY_BACKUP_DEVICES_PER_ACTOR", "auto", _per_actor)

    def __repr__(self) -> str:
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        config_file: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings; raise ``ConfigError`` listing every problem, one per line."""
        environ = os.environ if environ is None else environ
        config_file = config_file or environ.get(CONFIG_ENV) or None
        raw: dict[str, Any] = {}
        problems: list[str] = []
        if config_file:
            raw.update(_read_config_file(Path(config_file), problems))
        for f in dataclasses.fields(cls):
            env = f.metadata["env"]
            if environ.get(env, "") != "":
                raw[f.name] = (env, environ[env])
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            source, text = raw[f.name]
            try:
                values[f.name] = f.metadata["parse"](str(text).strip())
            except ValueError as exc:
                problems.append(f"{source}: {_reason(exc)} (got {_shown(f, text)})")
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not problems:
            try:
                settings = cls(**values)
            except TypeError as exc:  # an unknown override: a programming error
                raise ConfigError(str(exc)) from None
            problems.extend(settings.problems())
            if not problems:
                return settings
        raise ConfigError("\n".join(problems))

    def problems(self) -> list[str]:
        """Cross-field checks that single values cannot catch."""
        found = []
        if self.jitter_max < self.jitter_min:
            found.append(
                "CONFIG_BACKUP_JITTER_MAX: must not be below CONFIG_BACKUP_JITTER_MIN "
                f"({self.jitter_max:g} < {self.jitter_min:g})"
            )
        if bool(self.kafka_sasl_username) != bool(self.kafka_sasl_password):
            found.append("KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD must be set together")
        if bool(self.openbao_addr) != bool(self.openbao_token):
            found.append("OPENBAO_ADDR and OPENBAO_TOKEN must be set together")
        return found

    def summary(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, for logs and `config check`."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("secret") and value:
                value = "***"
            out[f.metadata["env"]] = value
        return out


def _reason(exc: ValueError) -> str:
    text = str(exc)
    if text.startswith(("could not convert", "invalid literal")):
        return "must be a number"
    return text


def _shown(f: dataclasses.Field, text: Any) -> str:
    return "a hidden value" if f.metadata.get("secret") else repr(str(text))


def _read_config_file(path: Path, problems: list[str]) -> dict[str, tuple[str, Any]]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        problems.append(f"{path}: cannot read config file ({exc.strerror})")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problems.append(f"{path}:{where} not valid YAML")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: must be a mapping of setting names to values")
        return {}
    by_name = {}
    for f in dataclasses.fields(Settings):
        by_name[f.name] = f
        by_name[f.metadata["env"]] = f
        by_name[f.metadata["env"].lower()] = f
    found: dict[str, tuple[str, Any]] = {}
    for key, value in data.items():
        f = by_name.get(str(key))
        if f is None:
            problems.append(f"{path}: unknown setting {key!r}")
        elif value is not None:
            found[f.name] = (f"{path}: {key}", value)
    return found
