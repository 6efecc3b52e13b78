"""DirectorySink on a real file system, with several processes writing at once."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from ray_backup.errors import PublishFailed
from ray_backup.sinks.directory import HISTORY_FILE, DirectorySink
from ray_backup.snapshot import Snapshot


def snap(device: str, n: int, size: int = 0, version: str | None = "7.16") -> Snapshot:
    text = f"# config {n}\n/system identity set name={device}\n" + "#" * size + "\n"
    collected_at = f"2025-01-01T00:{n // 60:02d}:{n % 60:02d}Z"
    return Snapshot(device_id=device, tenant_id="tenant-1", collected_at=collected_at,
                    sha256_hash=f"{n:064x}", config_text=text, normalization_version=2,
                    routeros_version=version)


def history(path) -> list[dict]:
    return [json.loads(line) for line in (path / HISTORY_FILE).read_text().splitlines()]


def test_publish_writes_latest_config_and_one_event_line(tmp_path):
    sink = DirectorySink(tmp_path / "out")
    first, second = snap("router-1", 1), snap("router-1", 2, version=None)
    sink.publish(first)
    sink.publish(second)
    sink.publish(snap("router-2", 1))

    assert (tmp_path / "out" / "router-1.rsc").read_text() == second.config_text
    assert (tmp_path / "out" / "router-2.rsc").exists()
    lines = history(tmp_path / "out")
    assert lines == [first.to_event(), second.to_event(), snap("router-2", 1).to_event()]
    assert "routeros_version" not in lines[1]
    assert (tmp_path / "out" / "router-1.rsc").stat().st_mode & 0o077 == 0
    assert sink.pending() == 0
    sink.close()


def test_odd_device_ids_stay_inside_the_directory(tmp_path):
    sink = DirectorySink(tmp_path / "out")
    sink.publish(snap("../escape", 1))
    assert not (tmp_path / "escape.rsc").exists()
    assert sink.config_path("../escape").parent == tmp_path / "out"
    assert sink.config_path("../escape").read_text() == snap("../escape", 1).config_text


def test_unusable_directory_is_a_clear_publish_failed(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(PublishFailed, match="cannot create output directory"):
        DirectorySink(tmp_path / "file" / "out")


def test_write_error_is_publish_failed_naming_the_device(tmp_path):
    sink = DirectorySink(tmp_path)
    sink.config_path("r1").mkdir()  # a directory where the config file must go
    with pytest.raises(PublishFailed, match="device r1: cannot write snapshot"):
        sink.publish(snap("r1", 1))


def _writer(path: str, worker: int, count: int) -> None:
    sink = DirectorySink(path)
    for n in range(count):
        # large lines (about 256 KiB): far beyond PIPE_BUF, where unlocked appends interleave
        sink.publish(snap(f"dev-{worker}", n, size=256 * 1024))


def test_concurrent_appends_from_processes_leave_valid_lines(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    workers, count = 4, 12
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0

    lines = history(tmp_path)  # json.loads on each line: a torn line would raise
    assert len(lines) == workers * count
    for w in range(workers):
        mine = [e for e in lines if e["device_id"] == f"dev-{w}"]
        assert [e["sha256_hash"] for e in mine] == [f"{n:064x}" for n in range(count)]
        assert (tmp_path / f"dev-{w}.rsc").read_text() == snap(f"dev-{w}", count - 1, 256 * 1024).config_text
