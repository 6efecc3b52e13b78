"""Retention runs from the storing processes: on the first store, then every few hours."""

import logging

from ray_backup.history.rules import Retention


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prunes_first_then_only_when_due():
    clock, calls = Clock(), []
    retention = Retention(90, every_s=3600, clock=clock)
    prune = lambda days: calls.append(days) or 0  # noqa: E731
    retention.maybe_prune(prune)
    retention.maybe_prune(prune)
    clock.now += 3599
    retention.maybe_prune(prune)
    clock.now += 1
    retention.maybe_prune(prune)
    assert calls == [90, 90]


def test_off_without_days():
    calls = []
    Retention(None).maybe_prune(calls.append)
    assert calls == []


def test_a_failing_prune_is_logged_not_raised(caplog):
    def prune(days):
        raise OSError("disk gone")

    with caplog.at_level(logging.WARNING):
        Retention(1).maybe_prune(prune)
    assert "prune failed: disk gone" in caplog.text
