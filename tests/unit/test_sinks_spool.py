"""DiskSpool: order, bound, atomicity, per-device locking across processes."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time

import pytest

from ray_backup.errors import PublishFailed
from ray_backup.sinks.files import device_of, safe_name
from ray_backup.sinks.spool import DiskSpool
from ray_backup.snapshot import Snapshot

SECRET = "/user add name=admin password=hunter2"


def snap(device: str = "dev-1", n: int = 0, size: int = 0) -> Snapshot:
    text = f"# {n}\n{SECRET}\n" + "x" * size
    return Snapshot(device_id=device, tenant_id="t", collected_at=f"2025-01-01T00:00:{n:02d}Z",
                    sha256_hash=f"{n:064x}", config_text=text, normalization_version=1)


class StepClock:
    """A wall clock that can be stepped backwards, as NTP may do."""

    def __init__(self, start: int = 1_700_000_000_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def spool(tmp_path) -> DiskSpool:
    return DiskSpool(tmp_path / "spool", max_bytes=10_000_000)


def test_entries_come_back_oldest_first_per_device(spool):
    for n in range(5):
        spool.append(snap("a", n))
        spool.append(snap("b", n))
    for device in ("a", "b"):
        loaded = [spool.load(e) for e in spool.entries(device)]
        assert [s.collected_at for s in loaded] == [snap(device, n).collected_at for n in range(5)]
        assert all(s.device_id == device for s in loaded)
    assert spool.pending() == 10


def test_order_survives_a_clock_stepping_back(tmp_path):
    clock = StepClock()
    spool = DiskSpool(tmp_path, 10_000_000, clock_ns=clock)
    spool.append(snap("a", 0))
    clock.now -= 3_600 * 10**9  # an hour back
    spool.append(snap("a", 1))
    # and a second process (a fresh spool object) appending after the step
    DiskSpool(tmp_path, 10_000_000, clock_ns=clock).append(snap("a", 2))
    assert [spool.load(e).collected_at[-3:-1] for e in spool.entries("a")] == ["00", "01", "02"]


def test_entry_names_follow_the_documented_pattern(spool):
    entry = spool.append(snap("dev-1"))
    ns, seq, rest = entry.name.split("-", 2)
    assert len(ns) == 20 and ns.isdigit() and seq.isdigit()
    assert rest == "dev-1.json"
    assert entry.path.parent.name == "dev-1"


def test_entries_are_the_exact_event_and_owner_only(spool):
    s = snap("a", 1)
    entry = spool.append(s)
    assert entry.path.read_bytes() == s.to_json_bytes()
    assert json.loads(entry.path.read_bytes()) == s.to_event()
    assert entry.path.stat().st_mode & 0o077 == 0
    assert spool.load(entry) == s


def test_backlog_lists_devices_waiting_longest_first(spool):
    spool.append(snap("late", 0))  # appended first: waiting longest
    spool.append(snap("early", 0))
    spool.append(snap("late", 1))
    assert spool.backlog() == ["late", "early"]


def test_remove_drops_the_empty_device_directory(spool):
    entries = [spool.append(snap("a", n)) for n in range(2)]
    spool.remove(entries[0])
    assert (spool.directory / "a").is_dir()
    spool.remove(entries[1])
    assert not (spool.directory / "a").exists()
    assert spool.pending() == 0 and spool.backlog() == []
    spool.append(snap("a", 3))  # the directory comes back when needed
    assert spool.pending() == 1


def test_full_spool_refuses_new_entries_and_keeps_old_ones(tmp_path, caplog):
    one = len(snap("a", 0, size=1000).to_json_bytes())
    spool = DiskSpool(tmp_path, max_bytes=2 * one + 10)
    first = [spool.append(snap("a", n, size=1000)) for n in range(2)]
    with caplog.at_level(logging.ERROR), pytest.raises(PublishFailed, match="full"):
        spool.append(snap("a", 2, size=1000))
    assert spool.entries("a") == first  # nothing dropped, nothing added
    assert "full" in caplog.text
    assert SECRET not in caplog.text
    spool.remove(first[0])
    spool.append(snap("a", 3, size=1000))  # room again
    assert spool.pending() == 2


def test_rejected_entries_leave_the_queue_but_count_against_the_bound(spool):
    entry = spool.append(snap("a", 0, size=500))
    size = spool.size_bytes()
    kept = spool.reject(entry, "MSG_SIZE_TOO_LARGE")
    assert kept.exists() and kept.parent.name == ".rejected"
    assert spool.pending() == 0 and spool.entries("a") == []
    assert spool.size_bytes() == size
    spool.keep_rejected(snap("b", 0), "INVALID_RECORD")
    assert len(list((spool.directory / ".rejected").iterdir())) == 2


def test_a_crashed_write_leaves_no_entry(spool, monkeypatch):
    def crash(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", crash)
    with pytest.raises(OSError):
        spool.append(snap("a"))
    monkeypatch.undo()
    assert spool.pending() == 0
    leftovers = [p.name for p in (spool.directory / "a").iterdir()]
    assert leftovers == []  # the temporary file is removed too


def test_half_written_temporary_files_are_not_entries(spool):
    (spool.directory / "a").mkdir()
    (spool.directory / "a" / ".tmp-123-4-a").write_bytes(b'{"device_id": "a", "conf')
    assert spool.pending() == 0 and spool.entries("a") == [] and spool.backlog() == []


def test_an_existing_entry_is_never_overwritten(tmp_path):
    clock = StepClock()
    first, second = DiskSpool(tmp_path, 10**7, clock_ns=clock), DiskSpool(tmp_path, 10**7, clock_ns=clock)
    a = first.append(snap("a", 0))
    b = second.append(snap("a", 1))  # same clock, fresh sequence: same name would collide
    assert a.name != b.name
    assert [first.load(e).collected_at for e in first.entries("a")] == [
        snap("a", 0).collected_at, snap("a", 1).collected_at]


def test_load_of_a_corrupt_entry_raises_value_error(spool):
    entry = spool.append(snap("a"))
    entry.path.write_bytes(b"not json")
    with pytest.raises(ValueError, match="not a snapshot event"):
        spool.load(entry)


@pytest.mark.parametrize("device", ["../etc", "a/b", ".hidden", "ünï cødé", "x" * 300, ""])
def test_any_device_id_is_a_safe_file_name(spool, device):
    name = safe_name(device)
    assert "/" not in name and not name.startswith(".") and len(name) <= 150
    entry = spool.append(snap(device))
    assert entry.path.parent.parent == spool.directory
    assert spool.load(entry).device_id == device
    assert spool.backlog() == [device]
    if 0 < len(device) < 100:  # long and empty ids are read back from the entry
        assert device_of(name) == device


def test_repr_has_no_config(spool):
    spool.append(snap("a"))
    assert SECRET not in repr(spool)


def _hold_lock(directory: str, ready, release) -> None:
    spool = DiskSpool(directory, 10**6)
    with spool.device_lock("a") as held:
        assert held
        ready.set()
        release.wait(10)


def test_device_lock_is_exclusive_across_processes(spool):
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(spool.directory), ready, release))
    child.start()
    try:
        assert ready.wait(20)
        start = time.monotonic()
        with spool.device_lock("a", timeout=0.2) as held:
            assert not held
        assert time.monotonic() - start < 1
        with spool.device_lock("b", timeout=0) as held:  # other devices are not blocked
            assert held
    finally:
        release.set()
        child.join(10)
    with spool.device_lock("a", timeout=2) as held:
        assert held


def test_device_lock_is_exclusive_between_threads_of_one_process(spool):
    with spool.device_lock("a") as outer:
        assert outer
        with spool.device_lock("a", timeout=0) as inner:
            assert not inner
