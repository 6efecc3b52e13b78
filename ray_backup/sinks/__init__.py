"""Sinks: where snapshots are published (Kafka, or a local directory)."""
