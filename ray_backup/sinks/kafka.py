"""The Kafka sink: one idempotent producer per process, a disk spool behind it.

``publish`` returns only once the broker acknowledged the event (``acks=all``,
idempotent producer, key = device id so a device's snapshots share a partition
and keep their order). Nothing collected is lost: an event the broker did not
acknowledge within the delivery timeout goes to the ``DiskSpool`` and
``publish`` raises ``PublishFailed``; spooled events are delivered, oldest
first, by the device's next ``publish`` (a device's new snapshot never overtakes
its spooled ones) and by a background drainer for devices that went quiet.

The producer's settings and why are in ``kafka_config``. A fatal producer
error (e.g. a broker that lost its producer-id state, as an in-memory broker
does on restart) replaces the producer; undelivered events are retried once on
the new one, then spooled.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from ray_backup.errors import PublishFailed
from ray_backup.settings import Settings
from ray_backup.sinks.kafka_config import default_spool_dir, producer_config
from ray_backup.sinks.spool import DiskSpool, SpoolEntry
from ray_backup.snapshot import Snapshot

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

DELIVERY_MARGIN_S = 5.0  # past message.timeout.ms, so the delivery report comes first
DRAIN_BATCH = 32  # in flight at once when catching up; pipelined, order kept by idempotence
DRAIN_INTERVAL_S = 10.0
DRAIN_BACKOFF_MAX_S = 60.0

# The broker will never take these, however often they are retried.
_PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD, KafkaError.INVALID_MSG,
})
# The producer's idempotence state is gone: only a new producer can send again.
_PRODUCER_BROKEN = frozenset({
    KafkaError._FATAL, KafkaError.UNKNOWN_PRODUCER_ID, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
    KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.INVALID_PRODUCER_ID_MAPPING,
    KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT,
})


class Rejected(PublishFailed):
    """The broker refused an event for good (too large, invalid); it is kept aside."""


class KafkaSink:
    """Publishes snapshots to Kafka; thread-safe, one per process."""

    def __init__(
        self,
        settings: Settings,
        *,
        delivery_timeout: float | None = None,
        spool: DiskSpool | None = None,
        drain_interval: float = DRAIN_INTERVAL_S,
    ) -> None:
        self.topic = settings.kafka_topic
        self.bootstrap = settings.kafka_bootstrap_servers
        self.delivery_timeout = delivery_timeout or settings.command_timeout
        self.spool = spool or DiskSpool(default_spool_dir(settings), settings.spool_max_bytes)
        self._config = producer_config(settings, self.delivery_timeout)
        self._config["logger"] = logging.getLogger(f"{__name__}.librdkafka")
        self._current = (self._new_producer(0), 0)  # (producer, generation), swapped whole
        self._reset_lock = threading.Lock()
        self._broken_generation = -1  # set by a fatal error report of that producer
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._reachable = True
        self._drain_interval = drain_interval
        self._threads = [
            threading.Thread(target=self._poll_loop, name="kafka-sink-poll", daemon=True),
            threading.Thread(target=self._drain_loop, name="kafka-sink-drain", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"KafkaSink(topic={self.topic!r}, bootstrap={self.bootstrap!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Sink protocol --------------------------------------------------

    def publish(self, snapshot: Snapshot) -> None:
        """Deliver the device's spooled snapshots, then this one; raise PublishFailed if any waits."""
        try:
            self._publish(snapshot)
        except PublishFailed:
            raise
        except OSError as exc:  # the spool's disk, not the network
            logger.error("device %s: spool error: %s", snapshot.device_id, exc)
            raise PublishFailed(f"device {snapshot.device_id}: spool error: {exc}") from exc

    def _publish(self, snapshot: Snapshot) -> None:
        device = snapshot.device_id
        if self._closed.is_set():
            self._spool(snapshot)
            raise PublishFailed(f"device {device}: Kafka sink is closed; snapshot spooled")
        with self.spool.device_lock(device, timeout=self.delivery_timeout) as held:
            if not held:
                self._spool(snapshot)
                raise PublishFailed(
                    f"device {device}: its spooled snapshots are being delivered by another "
                    "thread or process; this one is spooled behind them"
                )
            if not self.spool.entries(device):
                self._publish_now(snapshot)
                return
            try:
                mine = self._spool(snapshot)  # behind the older ones, never ahead
            except PublishFailed:  # spool full: catch up first, then send this one from memory
                self._drain_device(device)
                self._publish_now(snapshot)
                return
            self._drain_device(device, mine)

    def pending(self) -> int:
        """Spooled snapshots on this node (the spool is shared by its processes)."""
        return self.spool.pending()

    def close(self) -> None:
        """Stop the background threads and flush the producer; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=self.delivery_timeout + DELIVERY_MARGIN_S)
        left = self._current[0].flush(DELIVERY_MARGIN_S)
        if left:
            logger.warning("Kafka sink closed with %d event(s) unconfirmed; they stay spooled "
                           "or will be re-published", left)

    def drain(self, wait_s: float = 10.0) -> bool:
        """Deliver every device's spooled snapshots now; False if some are still waiting.

        A device whose backlog another deliverer (this sink's drainer, another process) is
        delivering at that moment is waited for up to ``wait_s``."""
        failed, skipped = self._drain(wait_s)
        return not failed and not skipped

    def _drain(self, wait_s: float) -> tuple[bool, bool]:
        """(a delivery failed, a device was left to another deliverer)."""
        skipped = False
        for device in self.spool.backlog():
            with self.spool.device_lock(device, timeout=wait_s) as held:
                if not held:  # someone else is delivering this device right now
                    skipped = True
                    continue
                try:
                    self._drain_device(device)
                except PublishFailed as exc:
                    logger.warning("spool drain stopped: %s", exc)
                    return True, skipped
        return False, skipped

    # -- delivery ------------------------------------------------------------

    def _publish_now(self, snapshot: Snapshot) -> None:
        device = snapshot.device_id
        error = self._deliver([snapshot])[0]
        if error is None:
            return
        if error.code() in _PERMANENT:
            kept = self.spool.keep_rejected(snapshot, error.str())
            raise Rejected(f"device {device}: Kafka refused the snapshot ({error.str()}); "
                           f"kept in {kept}")
        self._spool(snapshot)
        raise PublishFailed(
            f"device {device}: not acknowledged by Kafka ({error.str()}); spooled for redelivery"
        )

    def _drain_device(self, device: str, mine: SpoolEntry | None = None) -> None:
        """Deliver the device's spool oldest first; raise PublishFailed if any entry stays.

        ``mine`` is the caller's own snapshot: if the broker refuses it for good, that
        is the caller's failure (``Rejected``), not an old entry's.
        """
        delivered, refused = 0, None
        while batch := self.spool.entries(device)[:DRAIN_BATCH]:
            loaded = self._load(batch)
            results = self._deliver([snapshot for _, snapshot in loaded])
            failure = None
            for (entry, _), error in zip(loaded, results, strict=True):
                if error is None:
                    self.spool.remove(entry)
                    delivered += 1
                elif error.code() in _PERMANENT:
                    kept = self.spool.reject(entry, error.str())
                    if entry == mine:
                        refused = f"Kafka refused the snapshot ({error.str()}); kept in {kept}"
                elif failure is None:
                    failure = error
            if failure is not None:
                left = len(self.spool.entries(device))
                raise PublishFailed(
                    f"device {device}: Kafka did not acknowledge ({failure.str()}); "
                    f"{left} snapshot(s) stay spooled"
                )
        if delivered:
            logger.info("device %s: delivered %d spooled snapshot(s)", device, delivered)
        if refused:
            raise Rejected(f"device {device}: {refused}")

    def _load(self, batch: list[SpoolEntry]) -> list[tuple[SpoolEntry, Snapshot]]:
        loaded = []
        for entry in batch:
            try:
                loaded.append((entry, self.spool.load(entry)))
            except ValueError as exc:
                self.spool.reject(entry, str(exc))
        return loaded

    def _deliver(self, snapshots: list[Snapshot]) -> list[KafkaError | None]:
        """Send in order and wait for every delivery report; None means acknowledged."""
        producer, generation = self._current
        results = self._wait([self._produce(producer, s) for s in snapshots])
        if any(e is not None and e.code() in _PRODUCER_BROKEN for e in results):
            self._reset_producer(generation)
            retry = [i for i, e in enumerate(results) if e is not None and e.code() not in _PERMANENT]
            producer, _ = self._current
            again = self._wait([self._produce(producer, snapshots[i]) for i in retry])
            for i, error in zip(retry, again, strict=True):
                results[i] = error
        if any(e is None for e in results):
            self._now_reachable()
        return results

    def _produce(self, producer: Producer, snapshot: Snapshot) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        deadline = time.monotonic() + self.delivery_timeout
        while True:
            try:
                producer.produce(
                    self.topic, key=snapshot.device_id.encode(), value=snapshot.to_json_bytes(),
                    on_delivery=_resolver(future),
                )
                return future
            except BufferError:  # local queue full: wait for the poll thread to make room
                if time.monotonic() > deadline:
                    error = KafkaError(KafkaError._QUEUE_FULL, "local producer queue full")
                    break
                time.sleep(0.05)
            except KafkaException as exc:  # _deliver resets a broken producer
                error = exc.args[0]
                break
        future.set_result(error)
        return future

    def _wait(self, futures: list[concurrent.futures.Future]) -> list[KafkaError | None]:
        deadline = time.monotonic() + self.delivery_timeout + DELIVERY_MARGIN_S
        results = []
        for future in futures:
            try:
                results.append(future.result(timeout=max(0.0, deadline - time.monotonic())))
            except concurrent.futures.TimeoutError:
                results.append(KafkaError(KafkaError._MSG_TIMED_OUT, "no delivery report in time"))
        return results

    def _spool(self, snapshot: Snapshot) -> SpoolEntry:
        entry = self.spool.append(snapshot)  # PublishFailed when full; OSError mapped by publish
        logger.warning("device %s: snapshot %s spooled for later delivery",
                       snapshot.device_id, snapshot.sha256_hash[:12])
        return entry

    # -- the producer's health --------------------------------------------------

    def _new_producer(self, generation: int) -> Producer:
        return Producer({**self._config, "error_cb": lambda e: self._on_error(e, generation)})

    def _reset_producer(self, generation: int) -> None:
        """Replace a producer that hit a fatal error (once per generation)."""
        with self._reset_lock:
            old, current = self._current
            if current != generation or self._closed.is_set():
                return
            self._current = (self._new_producer(generation + 1), generation + 1)
        logger.warning("Kafka producer replaced after a fatal error")
        # Fail what it still holds, and serve those delivery reports now: nothing polls a
        # replaced producer, so a publish waiting on one would otherwise wait out its timeout.
        old.purge()
        left = old.flush(DELIVERY_MARGIN_S)
        if left:
            logger.warning("replaced Kafka producer still held %d event(s); their publishes "
                           "time out and spool", left)

    def _on_error(self, error: KafkaError, generation: int) -> None:
        if error.fatal():
            logger.error("Kafka producer fatal error: %s", error.str())
            self._broken_generation = generation  # a replaced producer's reports change nothing
        elif error.code() == KafkaError._ALL_BROKERS_DOWN and self._reachable:
            self._reachable = False
            logger.warning("Kafka %s unreachable; snapshots will be spooled", self.bootstrap)
        else:
            logger.debug("Kafka client error: %s", error.str())

    def _now_reachable(self) -> None:
        if not self._reachable:
            self._reachable = True
            logger.info("Kafka %s reachable again", self.bootstrap)
        self._wake.set()  # a working broker: let the drainer catch up on other devices

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            producer, generation = self._current
            try:
                producer.poll(0.1)
            except KafkaException as exc:  # confluent-kafka raises fatal errors from poll
                if exc.args[0].fatal():
                    self._broken_generation = generation
                else:
                    logger.error("Kafka poll failed: %s", exc.args[0].str())
            except Exception:
                logger.exception("Kafka poll failed")
            if self._broken_generation == generation:
                self._reset_producer(generation)

    def _drain_loop(self) -> None:
        delay = self._drain_interval
        while not self._closed.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._closed.is_set():
                return
            try:
                # Never waits: a device someone else is delivering is not a failure.
                drained = not self._drain(0)[0]
            except Exception:
                logger.exception("spool drain failed")
                drained = False
            delay = self._drain_interval if drained else min(delay * 2, DRAIN_BACKOFF_MAX_S)


def _resolver(future: concurrent.futures.Future) -> Callable[[KafkaError | None, Any], None]:
    def on_delivery(error: KafkaError | None, _message: Any) -> None:
        if not future.done():
            try:
                future.set_result(error)
            except concurrent.futures.InvalidStateError:
                pass
    return on_delivery
