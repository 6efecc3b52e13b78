"""HistoryWriter: one member of the consumer group that turns the snapshot topic into history.

Each writer consumes its share of the snapshot topic's partitions (a device's
snapshots share a partition, key = device id, so they arrive in order), stores
each snapshot in the history store and publishes the change event of each new
version. Offsets are committed one message at a time, synchronously, and only
after the store committed and the change event is out:

- a crash or kill before the commit delivers the message again, to this or another
  writer; the store finds the same hash and stores nothing (``duplicate``);
- a poison message (not JSON, a field missing or of the wrong type, a hash that is
  not the SHA-256 of the text) is logged once with its partition and offset, never
  its content, then committed and skipped: it can never succeed, and retrying it
  would stop the partition;
- a store failure (the database is down) commits nothing: the writer seeks back
  to the message, pauses its partitions (staying in the group), backs off and
  tries the same message again until the store answers. Nothing is lost, and
  because the store is idempotent nothing is stored twice.

A change event whose publication fails after its version was stored is kept and
retried with the message. If this process dies in between, the message comes again
and the store finds a duplicate of its own newest version (same hash, same collection
time): the change event of that version goes out then (``rules.redelivered_change``),
so change events are at least once.

Plain Python: ``actors/options.py`` makes it a Ray actor; ``history/writers.py``
starts and stops the group.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from ray_backup import logs
from ray_backup.history.base import ChangeEvent, ChangeSink, HistoryRejected, HistoryStore
from ray_backup.history.events import PoisonMessage, failure_line, parse_snapshot
from ray_backup.history.rules import redelivered_change
from ray_backup.settings import Settings
from ray_backup.sinks.kafka_config import security_config

log = logging.getLogger(__name__)

POLL_S = 0.5
LAG_REFRESH_S = 1.0
BACKOFF_MIN_S = 0.5
BACKOFF_MAX_S = 10.0
# A killed writer's partitions go to the others after this long.
SESSION_TIMEOUT_MS = 10000
HEARTBEAT_MS = 2000


def consumer_config(settings: Settings, name: str) -> dict[str, Any]:
    """librdkafka settings of a writer's consumer (holds the SASL password: never log it)."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "group.id": settings.history_group,
        "client.id": f"ray-backup-{name}@{socket.gethostname()}",
        "enable.auto.commit": False,  # committed by hand, after the store commit
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a new group reads the snapshots already on the topic
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        **security_config(settings),
    }


class HistoryWriter:
    """Consumes the snapshot topic into a history store until stopped.

    ``store``/``changes`` default to the ones the settings name, opened in the
    writer's thread (retried while the database is down). ``autostart`` runs the
    loop at once: a writer restarted by Ray resumes without being told.
    """

    def __init__(
        self,
        name: str,
        settings: Settings | None = None,
        *,
        store: HistoryStore | None = None,
        changes: ChangeSink | None = None,
        autostart: bool = True,
    ) -> None:
        self.name = name
        self.settings = settings or Settings.load()
        logs.setup(self.settings.log_level)
        self.store = store
        self.changes = changes
        self.counts: Counter[str] = Counter()
        self.lag: int | None = None
        self._unannounced: dict[tuple[str, int, int], ChangeEvent] = {}
        self._failing_since: float | None = None
        self._backoff = BACKOFF_MIN_S
        self._lag_at = 0.0
        self._high: dict[tuple[str, int], int] = {}  # partition -> high watermark seen
        self._done: dict[tuple[str, int], int] = {}  # partition -> next offset to handle
        self._assigned = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if autostart:
            self.start()

    def __repr__(self) -> str:
        return f"HistoryWriter({self.name!r}, topic={self.settings.kafka_topic!r})"

    # -- the actor's API ---------------------------------------------------------

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Finish the message in hand, leave the group, close; True if the loop ended in time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stats(self) -> dict:
        """Counts since this process started, and the current lag (None until known)."""
        return {
            "name": self.name,
            "running": bool(self._thread and self._thread.is_alive()),
            "lag": self.lag,
            "assigned_partitions": self._assigned,
            "store_failing": self._failing_since is not None,
            **{k: self.counts[k] for k in ("new", "duplicate", "stale", "rejected", "poison", "changes",
                                            "store_failures", "commit_failures")},
        }

    # -- the loop ----------------------------------------------------------------

    def _run(self) -> None:
        if not self._open_parts():
            return
        consumer = Consumer(consumer_config(self.settings, self.name))
        consumer.subscribe([self.settings.kafka_topic], on_assign=self._on_assign,
                           on_revoke=self._on_revoke)
        log.info("history writer %s: consuming %s as group %s", self.name,
                 self.settings.kafka_topic, self.settings.history_group)
        try:
            while not self._stop.is_set():
                self._step(consumer)
        finally:
            consumer.close()  # leaves the group: the other writers take the partitions now
            self._close_parts()
            log.info("history writer %s: stopped", self.name)

    def _step(self, consumer: Consumer) -> None:
        try:
            msg = consumer.poll(POLL_S)
            if msg is not None:
                if msg.error():
                    self._client_error(msg.error())
                else:
                    self._note_high(consumer, msg)
                    self._handle(consumer, msg)
            self._refresh_lag(consumer)
        except Exception:  # never a crash loop: log, wait a little, carry on
            log.exception("history writer %s: unexpected error; continuing", self.name)
            self._stop.wait(BACKOFF_MIN_S)

    def _handle(self, consumer: Consumer, msg: Message) -> None:
        where = (msg.topic(), msg.partition(), msg.offset())
        change = self._unannounced.get(where)
        if change is None:
            try:
                snapshot = parse_snapshot(msg.value())
                stored = self._store(snapshot)
            except (PoisonMessage, HistoryRejected) as exc:
                # Never storable: retrying would only stop the partition behind it.
                self.counts["poison" if isinstance(exc, PoisonMessage) else "rejected"] += 1
                log.error("history writer %s: skipping message %s[%d]@%d: %s", self.name,
                          *where, exc)
                self._commit(consumer, msg)
                return
            if stored is None:
                self._retry_later(consumer, msg)
                return
            change = stored.change
            if change is None:
                try:
                    change = redelivered_change(self.store, snapshot, stored)
                except Exception as exc:  # cannot tell whether it was announced: hold the offset
                    self.counts["store_failures"] += 1
                    log.warning("history writer %s: device %s: cannot read its newest versions "
                                "(%s); retrying", self.name, snapshot.device_id, failure_line(exc))
                    self._retry_later(consumer, msg)
                    return
            self.counts[stored.outcome] += 1
        if change is not None and not self._announce(where, change):
            self._retry_later(consumer, msg)
            return
        self._commit(consumer, msg)

    def _store(self, snapshot):
        """The store's verdict; None while it fails. ``HistoryRejected`` (never storable) passes."""
        try:
            stored = self.store.store(snapshot)
        except HistoryRejected:
            raise
        except Exception as exc:
            self.counts["store_failures"] += 1
            if self._failing_since is None:  # once per outage, not once per retry
                self._failing_since = time.monotonic()
                log.warning("history writer %s: history store failing (%s); holding the "
                            "offset and retrying", self.name, failure_line(exc))
            return None
        if self._failing_since is not None:
            log.info("history writer %s: history store back after %.1f s", self.name,
                     time.monotonic() - self._failing_since)
            self._failing_since = None
        self._backoff = BACKOFF_MIN_S
        return stored

    def _announce(self, where: tuple[str, int, int], change: ChangeEvent) -> bool:
        try:
            self.changes.publish_change(change)
        except Exception as exc:
            self._unannounced[where] = change
            log.warning("history writer %s: device %s: change event not published yet: %s",
                        self.name, change.device_id, failure_line(exc))
            return False
        self._unannounced.pop(where, None)
        self.counts["changes"] += 1
        return True

    def _commit(self, consumer: Consumer, msg: Message) -> None:
        offset = TopicPartition(msg.topic(), msg.partition(), msg.offset() + 1)
        self._done[(msg.topic(), msg.partition())] = msg.offset() + 1
        try:
            consumer.commit(offsets=[offset], asynchronous=False)
        except KafkaException as exc:
            # Delivered again later, the message is a duplicate: nothing is stored twice.
            self.counts["commit_failures"] += 1
            log.warning("history writer %s: offset commit for %s[%d]@%d failed: %s", self.name,
                        msg.topic(), msg.partition(), msg.offset(), exc.args[0].str())

    def _retry_later(self, consumer: Consumer, msg: Message) -> None:
        """Rewind to ``msg``, pause every partition (staying in the group), back off, resume."""
        _rewind(consumer, msg)
        consumer.pause(consumer.assignment())
        deadline = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)
        while not self._stop.is_set() and (left := deadline - time.monotonic()) > 0:
            fetched = consumer.poll(min(POLL_S, left))  # serves the group protocol
            if fetched is not None and not fetched.error():
                _rewind(consumer, fetched)  # fetched before the pause: read it again later
        consumer.resume(consumer.assignment())

    # -- parts, group events, lag --------------------------------------------------

    def _open_parts(self) -> bool:
        """Open the store and the change sink, retrying while they are unavailable."""
        from ray_backup.history import open_history
        from ray_backup.history.changes import open_changes

        delay = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                self.store = self.store or open_history(self.settings)
                self.changes = self.changes or open_changes(self.settings)
                return True
            except Exception as exc:
                log.warning("history writer %s: cannot open history yet (%s); retrying",
                            self.name, failure_line(exc))
                self._stop.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)
        return False

    def _close_parts(self) -> None:
        for part in (self.store, self.changes):
            try:
                if part is not None:
                    part.close()
            except Exception as exc:
                log.warning("history writer %s: closing %s: %s", self.name, type(part).__name__, exc)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = len(partitions)
        for p in partitions:  # another writer may have moved them on meanwhile
            self._done.pop((p.topic, p.partition), None)
        log.info("history writer %s: assigned partitions %s", self.name,
                 sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assigned = 0
        self._unannounced.clear()  # their messages go to another writer, uncommitted

    def _client_error(self, error: KafkaError) -> None:
        if error.code() != KafkaError._PARTITION_EOF:
            log.warning("history writer %s: Kafka: %s", self.name, error.str())

    def _note_high(self, consumer: Consumer, msg: Message) -> None:
        """Remember the partition's high watermark as of this message's fetch (cached: no
        broker round trip; a seek or pause forgets it, so it is kept here)."""
        tp = (msg.topic(), msg.partition())
        _low, high = consumer.get_watermark_offsets(TopicPartition(*tp), cached=True)
        self._high[tp] = max(self._high.get(tp, -1), high)

    def _refresh_lag(self, consumer: Consumer) -> None:
        """Messages between each partition's next offset and its high watermark, summed."""
        if time.monotonic() - self._lag_at < LAG_REFRESH_S:
            return
        self._lag_at = time.monotonic()
        total, known = 0, False
        for position in consumer.position(consumer.assignment()):
            tp = (position.topic, position.partition)
            _low, high = consumer.get_watermark_offsets(position, cached=True)
            high = self._high[tp] = max(self._high.get(tp, -1), high)
            done = self._done.get(tp, position.offset)
            if high >= 0 and done >= 0:
                total += max(0, high - done)
                known = True
        if known or not consumer.assignment():
            self.lag = total if known else (0 if self.lag is not None else None)


def _rewind(consumer: Consumer, msg: Message) -> None:
    try:
        consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
    except KafkaException as exc:  # revoked meanwhile: its new owner reads it from the commit
        log.debug("seek to %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
