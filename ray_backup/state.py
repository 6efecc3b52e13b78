"""The per-device state machine: gating, blocking and backoff (the reference's rules).

Pure functions over ``DeviceState``; time comes in as an argument so tests use a
fake clock.
"""

from __future__ import annotations

import random

from ray_backup import constants as C
from ray_backup import errors
from ray_backup.models import BackupResult, Device, DeviceState

# Backoff after 1, 2, and 3+ consecutive failures: 5 min, 15 min, 1 h.
BACKOFF_STEPS_S = (300.0, 900.0, 3600.0)

_BLOCKED_STATUS = {
    errors.AUTH_FAILED: C.STATUS_AUTH_BLOCKED,
    errors.HOST_KEY_MISMATCH: C.STATUS_HOSTKEY_BLOCKED,
}


def backoff_seconds(consecutive_failures: int) -> float:
    index = min(max(consecutive_failures, 1), len(BACKOFF_STEPS_S)) - 1
    return BACKOFF_STEPS_S[index]


def jitter_seconds(low: float, high: float, rng: random.Random | None = None) -> float:
    if high <= low:
        return low
    return (rng or random).uniform(low, high)


def is_blocked(state: DeviceState) -> bool:
    return state.last_error_kind in errors.BLOCKING_KINDS


def unblock_if_changed(state: DeviceState, device: Device) -> bool:
    """Lift a block when the credentials or stored host key changed since it was set."""
    if is_blocked(state) and state.blocked_revision != device.block_revision:
        clear_block(state)
        return True
    return False


def clear_block(state: DeviceState) -> None:
    state.last_error_kind = ""
    state.last_error = ""
    state.consecutive_failures = 0
    state.backoff_until = 0.0
    state.blocked_revision = ""
    state.presented_fingerprint = ""
    state.last_status = C.STATUS_PENDING


def gate(state: DeviceState, now: float) -> str | None:
    """Why this tick must not run (a status), or None when it may."""
    if is_blocked(state):
        return _BLOCKED_STATUS[state.last_error_kind]
    if now < state.backoff_until:
        return C.STATUS_BACKOFF
    return None


def record_attempt(state: DeviceState, now: float) -> None:
    state.last_attempt_at = now


def record_result(state: DeviceState, result: BackupResult, device: Device, now: float) -> None:
    """Fold one finished backup into the state."""
    if result.status == C.STATUS_SUCCESS:
        state.consecutive_failures = 0
        state.backoff_until = 0.0
        state.last_error_kind = ""
        state.last_error = ""
        state.blocked_revision = ""
        state.presented_fingerprint = ""
        state.last_status = C.STATUS_SUCCESS
        state.last_success_at = now
        state.last_hash = result.sha256_hash or ""
        return
    if result.status != C.STATUS_FAILED:
        state.last_status = result.status  # skipped or locked: nothing else changes
        return
    kind = result.error_kind or errors.UNKNOWN
    state.consecutive_failures += 1
    state.last_error_kind = kind
    state.last_error = result.error or ""
    if kind in errors.BLOCKING_KINDS:
        state.last_status = _BLOCKED_STATUS[kind]
        state.blocked_revision = device.block_revision
        state.backoff_until = 0.0
        state.presented_fingerprint = result.presented_fingerprint or ""
    else:
        state.last_status = C.STATUS_FAILED
        state.backoff_until = now + backoff_seconds(state.consecutive_failures)
