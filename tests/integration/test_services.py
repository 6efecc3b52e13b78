"""The service fixtures against real servers: PostgreSQL, Redis, a Kafka-protocol broker."""

from __future__ import annotations

import os
import shutil
import time
import uuid

import psycopg
import pytest
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from tests.support import services as svc


def _idempotent_producer(bootstrap: str, **extra) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                     "message.timeout.ms": 15000, **extra})


def _produce_acked(producer: Producer, topic: str, items: list[tuple[bytes, bytes]], timeout: float = 15):
    """Produce and wait for every delivery report; return (partition, offset) per message."""
    reports: list = []

    def on_delivery(err, msg):
        reports.append(err if err is not None else (msg.partition(), msg.offset()))

    for key, value in items:
        producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    remaining = producer.flush(timeout)
    assert remaining == 0, f"{remaining} messages not delivered; reports={reports}"
    errors = [r for r in reports if isinstance(r, KafkaError)]
    assert not errors, errors
    return reports


# --------------------------------------------------------------------------- helpers


def test_free_port_and_wait_for_port():
    port = svc.free_port()
    assert 0 < port < 65536
    assert not svc.port_open("127.0.0.1", port)
    with pytest.raises(TimeoutError):
        svc.wait_for_port("127.0.0.1", port, timeout=0.2)


def test_reachability_checks_are_fast_for_dead_endpoints():
    port = svc.free_port()
    t0 = time.monotonic()
    assert not svc.reachable_postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres")
    assert not svc.reachable_redis(f"redis://127.0.0.1:{port}/0")
    assert not svc.reachable_kafka(f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 2


class _FakeServer(svc.ManagedServer):
    kind = "fake"

    def __init__(self):
        super().__init__()
        self.started = False

    def start(self):
        self.started = True
        self.start_durations.append(0.0)
        return self

    @property
    def url(self):
        return "fake://managed"


def test_resolve_service_semantics(monkeypatch):
    up = {"redis://configured/0", "redis://default/0"}
    reachable = up.__contains__
    monkeypatch.delenv("RB_TEST_FAKE_URL", raising=False)

    # nothing configured: the default port when it answers, else our own server
    assert svc.resolve_service("x", "RB_TEST_FAKE_URL", "redis://default/0", reachable, _FakeServer)[::2] == (
        "redis://default/0", "default port")
    url, server, how = svc.resolve_service("x", "RB_TEST_FAKE_URL", "redis://down/0", reachable, _FakeServer)
    assert (url, how, server.started) == ("fake://managed", "managed", True)

    # configured and reachable: used as is
    monkeypatch.setenv("RB_TEST_FAKE_URL", "redis://configured/0")
    assert svc.resolve_service("x", "RB_TEST_FAKE_URL", "redis://default/0", reachable, _FakeServer)[0] == (
        "redis://configured/0")

    # configured but unreachable: a warning and our own server, not the default port
    monkeypatch.setenv("RB_TEST_FAKE_URL", "redis://down/0")
    with pytest.warns(svc.ServiceFallbackWarning, match="RB_TEST_FAKE_URL"):
        url, server, how = svc.resolve_service("x", "RB_TEST_FAKE_URL", "redis://default/0", reachable,
                                               _FakeServer)
    assert (url, how) == ("fake://managed", "managed")

    # forced: always our own
    monkeypatch.setenv("RB_TEST_FAKE_URL", "redis://configured/0")
    assert svc.resolve_service("x", "RB_TEST_FAKE_URL", "redis://default/0", reachable, _FakeServer,
                               force_own=True)[2] == "managed"


def test_a_server_that_cannot_start_raises_with_its_log():
    server = svc.PostgresServer(settings={"shared_buffers": "not-a-size"})
    try:
        with pytest.raises(svc.ServiceError, match="shared_buffers"):
            server.start()
        assert not server.is_running()
    finally:
        server.close()
    assert server.dir is None


# --------------------------------------------------------------------------- PostgreSQL


def test_pg_url_is_a_fresh_database(pg_url, pg_server_url):
    assert pg_url != pg_server_url
    dbname = pg_url.rsplit("/", 1)[-1]
    assert dbname.startswith("rb_test_")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'").fetchone()[0]
        assert tables == 0
        conn.execute("CREATE TABLE devices (id uuid PRIMARY KEY, hostname text NOT NULL)")
        device = uuid.uuid4()
        conn.execute("INSERT INTO devices VALUES (%s, %s)", (device, "rtr-1"))
        assert conn.execute("SELECT id, hostname FROM devices").fetchall() == [(device, "rtr-1")]
        assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"


def test_temporary_database_is_force_dropped(pg_server_url):
    # the context manager behind the pg_url fixture
    with svc.temporary_database(pg_server_url) as url:
        name = url.rsplit("/", 1)[-1]
        held = psycopg.connect(url)  # an open session must not block the drop (WITH (FORCE))
        held.execute("SELECT 1")
    held.close()
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None


def test_own_postgres_restart_keeps_data_and_clients_reconnect(own_postgres):
    url = own_postgres.url
    port = own_postgres.port
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn = psycopg.connect(url, autocommit=True)
    own_postgres.stop()
    assert not own_postgres.is_running()
    assert not svc.reachable_postgres(url)
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()
    own_postgres.start()
    assert own_postgres.port == port
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    own_postgres.kill()  # crash: the data survives crash recovery
    own_postgres.restart()
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


# --------------------------------------------------------------------------- Redis


def test_redis_prefix_set_get_and_cleanup(redis_url, redis_prefix):
    assert redis_prefix.startswith("rb_test_") and redis_prefix.endswith(":")
    client = redis.Redis.from_url(redis_url)
    client.set(redis_prefix + "device:1:status", "online")
    client.set(redis_prefix + "lock", "x", px=60000)
    assert client.get(redis_prefix + "device:1:status") == b"online"
    assert sorted(client.scan_iter(match=redis_prefix + "*")) == [
        (redis_prefix + "device:1:status").encode(), (redis_prefix + "lock").encode()]
    client.close()


def test_redis_key_prefix_deletes_only_its_keys(redis_url):
    # the context manager behind the redis_prefix fixture
    client = redis.Redis.from_url(redis_url)
    other = svc.unique_name("rb_test_") + ":"
    try:
        client.set(other + "keep", 1)
        with svc.redis_key_prefix(redis_url) as prefix:
            client.mset({f"{prefix}k{i}": i for i in range(1200)})  # more than one UNLINK batch
        assert list(client.scan_iter(match=prefix + "*")) == []
        assert client.get(other + "keep") == b"1"
    finally:
        svc.delete_prefix(redis_url, other)
        client.close()


def test_own_redis_restart_and_reconnect(own_redis):
    client = redis.Redis.from_url(own_redis.url, socket_timeout=2, socket_connect_timeout=2)
    client.set("k", "v")
    port = own_redis.port
    own_redis.stop()
    with pytest.raises(redis.ConnectionError):
        client.get("k")
    own_redis.start()
    assert own_redis.port == port
    # the same client object reconnects; no persistence, so the data is gone
    assert client.get("k") is None
    client.set("k", "v2")
    own_redis.kill()
    own_redis.start()
    assert client.ping()
    client.close()


# --------------------------------------------------------------------------- Kafka


def test_kafka_idempotent_produce_and_consume(kafka_bootstrap, kafka_topic):
    producer = _idempotent_producer(kafka_bootstrap)
    items = [(f"dev-{i}".encode(), f"config {i}".encode()) for i in range(10)]
    reports = _produce_acked(producer, kafka_topic, items)
    assert [offset for _p, offset in reports] == list(range(10))
    messages = svc.consume_all(kafka_bootstrap, kafka_topic, expected=10, timeout=15)
    assert [(m.key(), m.value()) for m in messages] == items
    # without `expected`: everything up to the high watermark
    assert len(svc.consume_all(kafka_bootstrap, kafka_topic, timeout=15)) == 10


def test_make_topic_partitions_and_group_consumer(kafka_bootstrap, make_topic):
    topic = make_topic(partitions=3)
    producer = _idempotent_producer(kafka_bootstrap)
    items = [(f"dev-{i}".encode(), b"x") for i in range(12)]
    reports = _produce_acked(producer, topic, items)
    assert {p for p, _o in reports} <= {0, 1, 2}
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": svc.unique_name("rb_test_g_"),
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         **svc.FAST_GROUP_CONSUMER_CONFIG})
    try:
        consumer.subscribe([topic])
        got = []
        deadline = time.monotonic() + 30
        while len(got) < len(items) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                raise KafkaException(msg.error())
            got.append(msg)
        assert sorted(m.key() for m in got) == sorted(k for k, _v in items)
        committed = consumer.commit(asynchronous=False)
        assert all(tp.error is None for tp in committed)
    finally:
        consumer.close()


def test_topic_factory_deletes_its_topics(kafka_bootstrap):
    # the context manager behind the make_topic fixture; tansu supports DeleteTopics
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    with svc.topic_factory(kafka_bootstrap) as make:
        topic = make(partitions=2)
        assert len(admin.list_topics(topic=topic, timeout=5).topics[topic].partitions) == 2
    assert topic not in admin.list_topics(timeout=5).topics


def test_own_kafka_restart_and_reconnect(own_kafka):
    topic = own_kafka.create_topic(svc.unique_name("rb_test_"))
    port = own_kafka.port
    producer = _idempotent_producer(own_kafka.bootstrap)
    _produce_acked(producer, topic, [(b"k", b"before")])
    own_kafka.stop()
    assert not svc.reachable_kafka(own_kafka.bootstrap)
    own_kafka.start()
    assert own_kafka.port == port
    # memory storage: the restarted broker is empty, the topic was re-created by KafkaBroker
    assert svc.consume_all(own_kafka.bootstrap, topic, timeout=10) == []
    # an idempotent producer from before the restart is stuck on UNKNOWN_PRODUCER_ID (tansu
    # forgets producer ids); a new producer on the same bootstrap address works
    fresh = _idempotent_producer(own_kafka.bootstrap)
    _produce_acked(fresh, topic, [(b"k", b"after")])
    assert [m.value() for m in svc.consume_all(own_kafka.bootstrap, topic, expected=1)] == [b"after"]


def test_tansu_forgets_idempotent_producer_ids_on_restart(own_kafka):
    """Documents a limitation of tansu's memory storage (fails if a new tansu fixes it)."""
    topic = own_kafka.create_topic(svc.unique_name("rb_test_"))
    producer = _idempotent_producer(own_kafka.bootstrap, **{"message.timeout.ms": 2000})
    _produce_acked(producer, topic, [(b"k", b"before")])
    own_kafka.restart()
    reports = []
    producer.produce(topic, value=b"after", on_delivery=lambda err, msg: reports.append(err))
    producer.flush(10)
    assert reports and reports[0] is not None and reports[0].code() == KafkaError._MSG_TIMED_OUT


def test_servers_die_with_a_hard_killed_test_process(tmp_path):
    """A test run killed with SIGKILL (no atexit) must not leave servers behind."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "import sys, time\n"
        "from tests.support import services as svc\n"
        "servers = [svc.PostgresServer().start(), svc.RedisServer().start(), svc.KafkaBroker().start()]\n"
        "print(' '.join(str(s.pid) for s in servers), flush=True)\n"
        "print(' '.join(str(s.dir) for s in servers), flush=True)\n"
        "print(svc._pg_bin_dir(svc._pg_run_as()).parent.parent, flush=True)\n"
        "time.sleep(120)\n"
    )
    root = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in child.stdout.readline().split()]
        dirs = child.stdout.readline().split()
        pg_copy = child.stdout.readline().strip()  # a private copy of pginstall if it needed one
        if "-pginstall-" in pg_copy:
            dirs.append(str(Path(pg_copy).parent))
        assert len(pids) == 3, "child did not start the servers"
        for pid in pids:
            os.kill(pid, 0)  # running
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _pid_alive(pid)]
        time.sleep(0.1)
    for pid in alive:  # do not leak them from this test either
        os.killpg(pid, signal.SIGKILL)
    for d in dirs:  # nobody was left to delete the temp dirs
        shutil.rmtree(d, ignore_errors=True)
    assert alive == [], f"servers still running after their parent was SIGKILLed: {alive}"


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
