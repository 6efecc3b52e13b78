"""The directory history store on a real file system: versions, races, retention, at rest."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import stat
import threading

import pytest

from ray_backup.history.base import HistoryLookupError
from ray_backup.history.directory import DirectoryHistory
from ray_backup.history.sealing import Sealer
from ray_backup.sinks.directory import DirectorySink
from tests.support.fake_transit import FakeTransit
from tests.support.history import DEVICE, TENANT, at, capture_text, insert_after, snapshot, variants

KEY = base64.b64encode(bytes(range(32))).decode()
SECRET = "hunter2-very-secret"


@pytest.fixture
def base():
    return capture_text()


def test_duplicate_delivery_stores_one_version(tmp_path, base):
    history = DirectoryHistory(tmp_path)
    first = history.store(snapshot(base, at(0)))
    again = history.store(snapshot(base, at(0)))
    later_same = history.store(snapshot(base, at(5)))
    assert (first.outcome, again.outcome, later_same.outcome) == ("new", "duplicate", "duplicate")
    assert [v.snapshot_id for v in history.versions(DEVICE)] == [first.version.snapshot_id]
    assert first.change is None and first.version.lines_added is None


def test_late_delivery_is_stale_and_never_a_reversed_diff(tmp_path, base):
    a, b = variants(base, 2)
    history = DirectoryHistory(tmp_path)
    history.store(snapshot(a, at(0)))
    newer = history.store(snapshot(b, at(2)))
    late = history.store(snapshot(a, at(1)))
    assert late.outcome == "stale"
    versions = history.versions(DEVICE)
    assert [v.snapshot_id for v in versions][0] == newer.version.snapshot_id
    assert len(versions) == 2 and versions[0].lines_added == 1 and versions[0].lines_removed == 0


def test_flip_back_stores_the_old_configuration_again(tmp_path, base):
    a, b = variants(base, 2)
    history = DirectoryHistory(tmp_path)
    stored = [history.store(snapshot(text, at(h))) for h, text in enumerate((a, b, a))]
    assert [s.outcome for s in stored] == ["new", "new", "new"]
    assert stored[2].change.old_snapshot_id == stored[1].version.snapshot_id
    assert (stored[2].version.lines_added, stored[2].version.lines_removed) == (0, 1)
    assert history.text(DEVICE) == a
    assert history.text(DEVICE, stored[1].version.snapshot_id) == b


def _store_all(path: str, texts: list[str]) -> list[str]:
    history = DirectoryHistory(path)
    return [history.store(snapshot(text, at(i))).outcome for i, text in enumerate(texts)]


def test_two_processes_racing_make_one_version_each(tmp_path, base):
    texts = variants(base, 12)
    with multiprocessing.get_context("fork").Pool(2) as pool:
        outcomes = pool.starmap(_store_all, [(str(tmp_path), texts)] * 2)
    versions = DirectoryHistory(tmp_path).versions(DEVICE)
    assert len(versions) == 12
    assert len({v.sha256_hash for v in versions}) == 12
    # Each snapshot was new for exactly one of the two writers.
    assert sum(o == "new" for run in outcomes for o in run) == 12


def test_threads_racing_make_one_version_each(tmp_path, base):
    texts = variants(base, 8)
    outcomes: list[str] = []
    workers = [threading.Thread(target=lambda: outcomes.extend(_store_all(str(tmp_path), texts)))
               for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert len(DirectoryHistory(tmp_path).versions(DEVICE)) == 8
    assert outcomes.count("new") == 8


def test_retention_keeps_the_newest_two_versions(tmp_path, base):
    a, b, c, d = variants(base, 4)
    history = DirectoryHistory(tmp_path)
    for hours, text in ((0, a), (1, b), (2, c), (3, d)):
        history.store(snapshot(text, at(hours)))
    other = "33333333-3333-4333-8333-333333333333"
    history.store(snapshot(a, at(0), device=other))
    assert history.prune(retention_days=1) == 2  # every version is older than a day
    versions = history.versions(DEVICE)
    assert [v.lines_added for v in versions] == [1, None]  # c's diff went with b
    assert history.text(DEVICE) == d and history.text(DEVICE, versions[1].snapshot_id) == c
    assert len(history.versions(other)) == 1
    folder = tmp_path / "history" / DEVICE
    assert len(list((folder / "versions").iterdir())) == 2
    assert [p.stem for p in (folder / "diffs").iterdir()] == [versions[0].snapshot_id]
    assert history.prune(retention_days=1) == 0


def test_secrets_masked_in_stored_diff_and_sections_not_in_text(tmp_path, base):
    old = insert_after(base, "/interface pppoe-client")
    new = old.replace("password=password", f"password={SECRET}")
    history = DirectoryHistory(tmp_path)
    history.store(snapshot(old, at(0)))
    stored = history.store(snapshot(new, at(1)))
    sid = stored.version.snapshot_id
    assert SECRET in history.text(DEVICE)
    assert SECRET in history.diff(DEVICE, history.versions(DEVICE)[1].snapshot_id, sid)
    assert SECRET not in history.stored_diff(DEVICE, sid)
    assert "password=***" in history.stored_diff(DEVICE, sid)
    index = (tmp_path / "history" / DEVICE / "index.jsonl").read_text()
    assert SECRET not in index and "password=***" in index
    assert [s.summary for s in stored.version.sections] == ["Modified 1 PPPoE client"]


def test_encrypted_at_rest_with_the_application_key(tmp_path, base):
    history = DirectoryHistory(tmp_path, Sealer(key_b64=KEY))
    history.store(snapshot(base, at(0)))
    stored = history.store(snapshot(base + "/system identity\nset name=x\n", at(1)))
    files = [p for p in (tmp_path / "history").rglob("*") if p.is_file() and p.suffix in (".rsc", ".diff")]
    assert len(files) == 3
    for path in files:
        assert path.read_text().startswith("aes256gcm:v1:")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert history.text(DEVICE) == base + "/system identity\nset name=x\n"
    assert "+set name=x" in history.stored_diff(DEVICE, stored.version.snapshot_id)
    with pytest.raises(Exception, match="CREDENTIAL_ENCRYPTION_KEY is not set"):
        DirectoryHistory(tmp_path).text(DEVICE)


def test_encrypted_at_rest_with_transit(tmp_path, base):
    with FakeTransit(token="t0ken") as fake:
        from ray_backup.credentials.transit import TransitClient

        history = DirectoryHistory(tmp_path, Sealer(TransitClient(fake.addr, "t0ken")))
        history.store(snapshot(base, at(0)))
        path = next((tmp_path / "history" / DEVICE / "versions").iterdir())
        assert path.read_text().startswith("vault:v1:")
        assert f"tenant_{TENANT}" in fake.keys
        assert history.text(DEVICE) == base


def test_resolve_by_prefix_and_errors_name_the_device(tmp_path, base):
    history = DirectoryHistory(tmp_path)
    sid = history.store(snapshot(base, at(0))).version.snapshot_id
    assert history.resolve(DEVICE, sid[:8]) == sid
    with pytest.raises(HistoryLookupError, match=DEVICE):
        history.resolve(DEVICE, sid[:7])
    with pytest.raises(HistoryLookupError, match="no history"):
        history.text("nope")
    assert history.latest() == [(DEVICE, sid)]


def test_old_event_log_is_imported_once(tmp_path, base):
    a, b, c = variants(base, 3)
    sink = DirectorySink(tmp_path)
    for hours, text in ((0, a), (1, a), (2, b)):
        sink.publish(snapshot(text, at(hours)))
    with open(tmp_path / "snapshots.jsonl", "a") as log:
        log.write("{not json\n")
    assert len(DirectoryHistory(tmp_path).versions(DEVICE)) == 2
    sink.publish(snapshot(c, at(3)))  # later lines reach the history another way
    assert len(DirectoryHistory(tmp_path).versions(DEVICE)) == 2


def test_many_versions_index_reads_whole_lines_only(tmp_path, base):
    history = DirectoryHistory(tmp_path)
    for i, text in enumerate(variants(base, 5)):
        history.store(snapshot(text, at(i)))
    index = tmp_path / "history" / DEVICE / "index.jsonl"
    with open(index, "a") as f:
        f.write('{"snapshot_id": "half-writ')  # a writer caught mid-line
    assert len(history.versions(DEVICE)) == 5
    assert len(history.versions(DEVICE, limit=2)) == 2
    assert json.loads(index.read_text().splitlines()[0])["lines_added"] is None
    assert stat.S_IMODE(os.stat(index).st_mode) == 0o600


def test_storing_prunes_expired_versions_on_its_own(tmp_path, base):
    a, b, c = variants(base, 3)
    for hours, text in ((0, a), (1, b)):
        DirectoryHistory(tmp_path).store(snapshot(text, at(hours)))
    store = DirectoryHistory(tmp_path, retention_days=1)
    store.store(snapshot(c, at(2)))  # a goes; b stays as the base of the latest change
    assert [v.lines_added for v in store.versions(DEVICE)] == [1, None]
