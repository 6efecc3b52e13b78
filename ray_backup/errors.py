"""One exception root; each leaf also inherits the built-in it resembles.

``ERROR_KINDS`` is the design's list of error kinds; ``kind_of`` maps any
exception to one of them, so results carry a kind instead of a traceback.
"""

from __future__ import annotations

import socket

AUTH_FAILED = "auth_failed"
HOST_KEY_MISMATCH = "host_key_mismatch"
TIMEOUT = "timeout"
TRUNCATED_OUTPUT = "truncated_output"
CONNECTION_REFUSED = "connection_refused"
UNREACHABLE = "unreachable"
SSH_INCOMPATIBLE = "ssh_incompatible"
INVALID_OUTPUT = "invalid_output"
CREDENTIALS = "credentials"
PUBLISH_FAILED = "publish_failed"
UNKNOWN = "unknown"

ERROR_KINDS = (
    AUTH_FAILED,
    HOST_KEY_MISMATCH,
    TIMEOUT,
    TRUNCATED_OUTPUT,
    CONNECTION_REFUSED,
    UNREACHABLE,
    SSH_INCOMPATIBLE,
    INVALID_OUTPUT,
    CREDENTIALS,
    PUBLISH_FAILED,
    UNKNOWN,
)

# Kinds that stop retries until the inventory row changes (reference: shouldRetry).
BLOCKING_KINDS = frozenset({AUTH_FAILED, HOST_KEY_MISMATCH})


class RayBackupError(Exception):
    """Root of every error ray-backup raises on purpose."""

    kind = UNKNOWN


class ConfigError(RayBackupError, ValueError):
    """A setting or an inventory row is invalid; the message names it."""


class UnknownDevice(ConfigError):
    """An operator named a device the inventory does not have."""


class AuthFailed(RayBackupError, PermissionError):
    kind = AUTH_FAILED


class HostKeyMismatch(RayBackupError, PermissionError):
    """``presented``: the fingerprint the device showed, for `ray-backup hostkey accept`."""

    kind = HOST_KEY_MISMATCH

    def __init__(self, message: str, presented: str | None = None) -> None:
        super().__init__(message)
        self.presented = presented


class HostKeyNotStored(RayBackupError, OSError):
    """A first-seen host key could not be stored: the key is not trusted, nothing is published.

    Not the device's fault and not a block: the backup is retried after its backoff."""


class CommandTimeout(RayBackupError, TimeoutError):
    kind = TIMEOUT


class TruncatedOutput(RayBackupError, EOFError):
    kind = TRUNCATED_OUTPUT


class ConnectionRefused(RayBackupError, ConnectionRefusedError):
    kind = CONNECTION_REFUSED


class Unreachable(RayBackupError, OSError):
    kind = UNREACHABLE


class SSHIncompatible(RayBackupError, ConnectionError):
    """No SSH algorithm both sides allow; the message names what the device offered.

    Transient like the others (backs off), since an operator fixes it by allowing
    the legacy algorithms or by upgrading the device, not by editing the inventory row.
    """

    kind = SSH_INCOMPATIBLE


class InvalidOutput(RayBackupError, ValueError):
    kind = INVALID_OUTPUT


class CredentialsError(RayBackupError, ValueError):
    kind = CREDENTIALS


class PublishFailed(RayBackupError, IOError):
    kind = PUBLISH_FAILED


def kind_of(exc: BaseException) -> str:
    """The error kind of any exception: ours carry one, built-ins are mapped."""
    if isinstance(exc, RayBackupError):
        return exc.kind
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TIMEOUT
    if isinstance(exc, ConnectionRefusedError):
        return CONNECTION_REFUSED
    if isinstance(exc, (socket.gaierror, OSError)):
        return UNREACHABLE
    return UNKNOWN
