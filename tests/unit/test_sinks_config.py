"""Choosing a sink, and the Kafka producer's settings."""

from __future__ import annotations

import pytest

from ray_backup.history.changes import FileChangeSink
from ray_backup.history.directory import DirectoryHistory
from ray_backup.settings import Settings
from ray_backup.sinks import open_sink
from ray_backup.sinks.directory import DirectorySink
from ray_backup.sinks.history import HistorySink
from ray_backup.sinks.kafka import DELIVERY_MARGIN_S, KafkaSink
from ray_backup.sinks.kafka_config import default_spool_dir, producer_config


def settings(**kw) -> Settings:
    return Settings(**kw)


def test_open_sink_is_a_directory_with_its_history_without_kafka(tmp_path):
    sink = open_sink(settings(output_dir=str(tmp_path / "out")))
    assert isinstance(sink, HistorySink) and isinstance(sink.inner, DirectorySink)
    assert isinstance(sink.store, DirectoryHistory) and isinstance(sink.changes, FileChangeSink)
    assert sink.inner.path == tmp_path / "out" and sink.inner.path.is_dir()


def test_open_sink_is_kafka_with_bootstrap_servers(tmp_path):
    sink = open_sink(settings(kafka_bootstrap_servers="127.0.0.1:1", spool_dir=str(tmp_path)))
    try:
        assert isinstance(sink, KafkaSink)
        assert sink.spool.directory == tmp_path
        assert sink.pending() == 0
    finally:
        sink.close()


def test_producer_is_idempotent_and_acknowledged_by_all_replicas():
    conf = producer_config(settings(kafka_bootstrap_servers="k:9092"), delivery_timeout=60)
    assert conf["enable.idempotence"] is True
    assert conf["acks"] == "all"
    assert conf["compression.type"] in {"zstd", "lz4"}
    assert conf["bootstrap.servers"] == "k:9092"


def test_delivery_report_always_comes_before_publish_stops_waiting():
    conf = producer_config(settings(kafka_bootstrap_servers="k"), delivery_timeout=7.5)
    assert conf["message.timeout.ms"] == 7500
    assert conf["request.timeout.ms"] <= conf["message.timeout.ms"]
    assert DELIVERY_MARGIN_S > 0


def test_message_limit_fits_the_largest_allowed_config():
    small = producer_config(settings(kafka_bootstrap_servers="k", max_output_bytes=1000), 60)
    assert small["message.max.bytes"] == 16 * 1024 * 1024
    big = producer_config(settings(kafka_bootstrap_servers="k", max_output_bytes=20 * 2**20), 60)
    assert big["message.max.bytes"] >= 2 * 20 * 2**20


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({}, {}),
        ({"kafka_ssl_ca_location": "/ca.pem"},
         {"security.protocol": "SSL", "ssl.ca.location": "/ca.pem"}),
        ({"kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
          "sasl.username": "u", "sasl.password": "p"}),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "SCRAM-SHA-512",
          "kafka_sasl_username": "u", "kafka_sasl_password": "p"},
         {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "SCRAM-SHA-512",
          "sasl.username": "u", "sasl.password": "p"}),
    ],
)
def test_tls_and_sasl_settings(given, expected):
    conf = producer_config(settings(kafka_bootstrap_servers="k", **given), 60)
    security = {k: v for k, v in conf.items() if k.startswith(("security.", "sasl.", "ssl."))}
    assert security == expected


def test_sink_repr_has_no_password(tmp_path):
    s = settings(kafka_bootstrap_servers="127.0.0.1:1", kafka_sasl_username="u",
                 kafka_sasl_password="s3cret", kafka_security_protocol="SASL_PLAINTEXT",
                 spool_dir=str(tmp_path))
    sink = KafkaSink(s, delivery_timeout=1)
    try:
        assert "s3cret" not in repr(sink)
    finally:
        sink.close()


def test_default_spool_dir_is_in_the_users_cache(tmp_path):
    assert str(default_spool_dir(settings())).endswith(".cache/ray-backup/spool")
    assert default_spool_dir(settings(spool_dir=str(tmp_path))) == tmp_path
