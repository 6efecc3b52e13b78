"""The reference scheduler's gating, blocking and backoff rules on a fake clock."""

from ray_backup import constants as C
from ray_backup import errors
from ray_backup.models import BackupResult, CredentialRef, Device, DeviceState
from ray_backup.state import backoff_seconds, gate, record_result, unblock_if_changed

DEVICE = Device(
    id="7d0c6a1e-3f57-4c7e-9a8e-2b1f0c9d4e51",
    host="127.0.0.1",
    port=2201,
    credentials=CredentialRef(inventory_file="/x.yaml", username="admin", digest="d1"),
)


def failed(kind):
    return BackupResult(DEVICE.id, C.STATUS_FAILED, error_kind=kind, error="boom")


def ok(h="ab" * 32):
    return BackupResult(DEVICE.id, C.STATUS_SUCCESS, sha256_hash=h)


def test_backoff_steps_are_5_15_60_minutes_then_capped():
    assert [backoff_seconds(n) for n in (1, 2, 3, 4, 10)] == [300, 900, 3600, 3600, 3600]


def test_transient_failures_back_off_and_success_resets():
    state, now = DeviceState(), 1000.0
    for failures, wait in ((1, 300), (2, 900), (3, 3600), (4, 3600)):
        assert gate(state, now) is None
        record_result(state, failed(errors.TIMEOUT), DEVICE, now)
        assert state.consecutive_failures == failures
        assert gate(state, now + wait - 1) == C.STATUS_BACKOFF
        assert gate(state, now + wait) is None
        now += wait
    record_result(state, ok(), DEVICE, now)
    assert (state.consecutive_failures, state.backoff_until, state.last_error_kind) == (0, 0.0, "")
    assert state.last_success_at == now and state.last_status == C.STATUS_SUCCESS


def test_auth_and_host_key_failures_block_without_backoff_timer():
    for kind, status in (
        (errors.AUTH_FAILED, C.STATUS_AUTH_BLOCKED),
        (errors.HOST_KEY_MISMATCH, C.STATUS_HOSTKEY_BLOCKED),
    ):
        state = DeviceState()
        record_result(state, failed(kind), DEVICE, 0.0)
        assert state.backoff_until == 0.0
        # Blocked forever, however much time passes.
        assert gate(state, 10**9) == status


def test_block_lifts_only_when_credentials_or_host_key_change():
    state = DeviceState()
    record_result(state, failed(errors.HOST_KEY_MISMATCH), DEVICE, 0.0)
    assert not unblock_if_changed(state, DEVICE)
    assert gate(state, 1.0) == C.STATUS_HOSTKEY_BLOCKED
    reset_key = Device(**{**DEVICE.__dict__, "host_key_fingerprint": "SHA256:new"})
    assert unblock_if_changed(state, reset_key)
    assert gate(state, 1.0) is None and state.consecutive_failures == 0

    record_result(state, failed(errors.AUTH_FAILED), reset_key, 2.0)
    new_creds = Device(**{**reset_key.__dict__, "credentials": CredentialRef(digest="d2")})
    assert unblock_if_changed(state, new_creds)


def test_skips_and_locked_do_not_count_as_failures():
    state = DeviceState()
    record_result(state, BackupResult(DEVICE.id, C.STATUS_LOCKED), DEVICE, 5.0)
    assert state.consecutive_failures == 0 and state.last_status == C.STATUS_LOCKED


def test_state_round_trips_through_dict_and_ignores_unknown_fields():
    state = DeviceState(consecutive_failures=2, backoff_until=12.5, last_error_kind="timeout")
    again = DeviceState.from_dict({**state.to_dict(), "from_a_newer_version": 1})
    assert again == state


def test_a_mismatch_keeps_the_presented_key_until_the_block_lifts():
    device = Device("d1", "10.0.0.1", host_key_fingerprint="SHA256:" + "A" * 43)
    state = DeviceState()
    presented = "SHA256:" + "B" * 43
    failed = BackupResult("d1", C.STATUS_FAILED, error_kind=errors.HOST_KEY_MISMATCH,
                          error="host key changed", presented_fingerprint=presented)
    record_result(state, failed, device, now=10.0)
    assert state.presented_fingerprint == presented
    assert DeviceState.from_dict(state.to_dict()).presented_fingerprint == presented
    accepted = Device("d1", "10.0.0.1", host_key_fingerprint=presented)
    assert unblock_if_changed(state, accepted) and state.presented_fingerprint == ""
    record_result(state, failed, device, now=20.0)
    record_result(state, BackupResult("d1", C.STATUS_SUCCESS, sha256_hash="h"), device, now=30.0)
    assert state.presented_fingerprint == ""
