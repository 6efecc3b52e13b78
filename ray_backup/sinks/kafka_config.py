"""The Kafka producer's settings, in librdkafka's names. The ones worth knowing:

- ``enable.idempotence`` with ``acks=all``: a retried send is written once and in
  order, and "acknowledged" means every in-sync replica has the event.
- ``message.timeout.ms`` (alias ``delivery.timeout.ms``) = the delivery timeout,
  so librdkafka always reports a message's fate before ``publish`` stops waiting.
- ``message.max.bytes`` = 2 × ``CONFIG_BACKUP_MAX_OUTPUT_BYTES`` + 1 MiB, at least
  16 MiB: the event is JSON, whose escaping of a config's quotes and line breaks
  stays well under double its size. That is the producer's limit on the
  uncompressed message; the broker checks the compressed batch against the
  topic's ``max.message.bytes`` (1 MiB by default). Exports compress about
  tenfold with zstd, so a few-MB config fits; raise the topic's limit (16 MiB)
  for the largest. A message the broker refuses for good is kept in the spool's
  ``.rejected/`` directory and reported, not retried forever.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from ray_backup.settings import Settings

DEFAULT_SPOOL_DIR = "~/.cache/ray-backup/spool"
MIN_MESSAGE_MAX_BYTES = 16 * 1024 * 1024


def default_spool_dir(settings: Settings) -> Path:
    return Path(settings.spool_dir or DEFAULT_SPOOL_DIR).expanduser()


def message_max_bytes(settings: Settings) -> int:
    return max(MIN_MESSAGE_MAX_BYTES, 2 * settings.max_output_bytes + 1024 * 1024)


def security_config(settings: Settings) -> dict[str, str]:
    """TLS/SASL settings in librdkafka's names; SASL without a protocol means SASL_SSL."""
    conf: dict[str, str] = {}
    protocol = settings.kafka_security_protocol
    if not protocol and settings.kafka_sasl_username:
        protocol = "SASL_SSL"
    elif not protocol and settings.kafka_ssl_ca_location:
        protocol = "SSL"
    if protocol:
        conf["security.protocol"] = protocol
    if settings.kafka_sasl_username:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        conf["sasl.username"] = settings.kafka_sasl_username
        conf["sasl.password"] = settings.kafka_sasl_password or ""
    elif settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_ssl_ca_location:
        conf["ssl.ca.location"] = settings.kafka_ssl_ca_location
    return conf


def producer_config(settings: Settings, delivery_timeout: float) -> dict[str, Any]:
    """librdkafka settings for the snapshot producer (holds the SASL password: never log it)."""
    timeout_ms = max(1000, int(delivery_timeout * 1000))
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "client.id": f"ray-backup@{socket.gethostname()}",
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "zstd",  # configs are text: large ratio, cheap
        "linger.ms": 5,
        "message.max.bytes": message_max_bytes(settings),
        "message.timeout.ms": timeout_ms,
        "request.timeout.ms": min(30000, timeout_ms),
        # Retry a down broker often enough to notice its return well within one timeout.
        "reconnect.backoff.max.ms": min(10000, max(250, timeout_ms // 4)),
        "socket.keepalive.enable": True,
        **security_config(settings),
    }
