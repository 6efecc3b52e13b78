"""The sink seam: where a device's snapshot goes once it is collected."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ray_backup.settings import Settings
from ray_backup.snapshot import Snapshot


@runtime_checkable
class Sink(Protocol):
    """Publishes snapshots. Implementations are thread-safe and shared by a process."""

    def publish(self, snapshot: Snapshot) -> None:
        """Return once the snapshot is durably accepted; raise ``PublishFailed`` otherwise.

        For Kafka "accepted" means acknowledged by the broker. A snapshot that
        could not be delivered is kept (spooled) and delivered later, but the
        call still raises: the backup did not reach its destination yet.
        """

    def pending(self) -> int:
        """Snapshots kept for later delivery, not yet accepted."""

    def close(self) -> None:
        """Flush what can be flushed and release resources; idempotent."""


def open_sink(settings: Settings) -> Sink:
    """Kafka when ``KAFKA_BOOTSTRAP_SERVERS`` is set, else a directory of files.

    With Kafka, the history writer actors consume the snapshot topic into history.
    Without, this process writes history itself (``HistorySink``): into PostgreSQL
    when ``DATABASE_URL`` is set, else into the output directory.
    """
    if settings.kafka_bootstrap_servers:
        from ray_backup.sinks.kafka import KafkaSink  # confluent-kafka only when used

        return KafkaSink(settings)
    from ray_backup.history import open_history
    from ray_backup.history.changes import open_changes
    from ray_backup.sinks.directory import DirectorySink
    from ray_backup.sinks.history import HistorySink

    return HistorySink(DirectorySink(settings.output_dir), open_history(settings), open_changes(settings))
