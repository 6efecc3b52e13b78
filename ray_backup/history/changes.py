"""Where change events go: Kafka ``config.changes`` (key = device id), or ``<output>/changes.jsonl``.

A change event (``ChangeEvent``) carries ids, hashes, line counts and the section
summary of a new version; never config text or secret lines. Both sinks return
only once the event is durable (acknowledged by the broker, or fsynced) and raise
``PublishFailed`` otherwise, so a writer can hold its offset and retry.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ray_backup.errors import PublishFailed
from ray_backup.history.base import ChangeEvent, ChangeSink
from ray_backup.settings import Settings
from ray_backup.sinks.files import append_line, ensure_dir

log = logging.getLogger(__name__)

CHANGES_FILE = "changes.jsonl"
DELIVERY_TIMEOUT_S = 30.0


class KafkaChangeSink:
    """Publishes change events to the changes topic; waits for the broker's acknowledgement."""

    def __init__(self, settings: Settings, delivery_timeout: float = DELIVERY_TIMEOUT_S) -> None:
        from confluent_kafka import Producer  # only when Kafka is used

        from ray_backup.sinks.kafka_config import producer_config

        self.topic = settings.changes_topic
        self.delivery_timeout = delivery_timeout
        self._producer = Producer(producer_config(settings, delivery_timeout))
        self._lock = threading.Lock()  # produce + flush as one step per event

    def __repr__(self) -> str:
        return f"KafkaChangeSink(topic={self.topic!r})"

    def publish_change(self, change: ChangeEvent) -> None:
        errors: list = []
        with self._lock:
            self._producer.produce(
                self.topic, key=change.device_id.encode(), value=change.to_json_bytes(),
                on_delivery=lambda error, _msg: errors.append(error),
            )
            left = self._producer.flush(self.delivery_timeout)
        error = errors[0] if errors else None
        if left or error is not None:
            why = error.str() if error is not None else "no acknowledgement in time"
            raise PublishFailed(f"device {change.device_id}: change event not published ({why})")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(5.0)
            self._producer = None  # librdkafka's client goes with its last reference


class FileChangeSink:
    """Appends change events to ``<output>/changes.jsonl``, one whole line under ``flock``.

    Several processes (device actors, one-shot workers) append to the same file; the
    file is owner-only like the rest of the output directory."""

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir).expanduser() / CHANGES_FILE

    def __repr__(self) -> str:
        return f"FileChangeSink({str(self.path)!r})"

    def publish_change(self, change: ChangeEvent) -> None:
        try:
            ensure_dir(self.path.parent)
            append_line(self.path, change.to_json_bytes() + b"\n")
        except OSError as exc:
            raise PublishFailed(f"device {change.device_id}: cannot append change event to "
                                f"{self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        pass


def open_changes(settings: Settings) -> ChangeSink:
    """Kafka when ``KAFKA_BOOTSTRAP_SERVERS`` is set, else ``<output>/changes.jsonl``."""
    if settings.kafka_bootstrap_servers:
        return KafkaChangeSink(settings)
    return FileChangeSink(settings.output_dir)
