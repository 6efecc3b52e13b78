"""Sinks: where snapshots are published (Kafka, or a local directory)."""

from ray_backup.sinks.base import Sink, open_sink

__all__ = ["Sink", "open_sink"]
