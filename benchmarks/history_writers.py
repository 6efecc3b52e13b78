"""History writers' throughput: snapshots/s the writer actors store into PostgreSQL.

    python benchmarks/history_writers.py --seconds 60 --devices 500 --writers 2

A private PostgreSQL (``db init``ed) and a private tansu broker are started
(tests.support.services); the snapshot topic gets ``--partitions`` partitions. The
real writer actors run on a private local Ray, started the way the job starts them
(``history.writers.start``), with ``CREDENTIAL_ENCRYPTION_KEY`` set, so every stored
configuration is AES-256-GCM sealed.

A producer thread keeps the topic ``--backlog`` snapshots ahead of the writers for
the whole run, so the writers are never idle: what is measured is their capacity.
Each snapshot is one of ``--devices`` devices' 30 KB configurations (a real RouterOS
capture, padded with address-list entries to ``--config-bytes``); ``--changed-percent``
of them differ from the device's previous one (a new version: sealed, diffed,
summarized, three tables written, a change event published), the rest repeat it (a
duplicate: one indexed lookup). Once the writers have handled their first snapshots
and ``--warmup`` seconds more, their handled count (``stats()``, summed) is sampled
every second for ``--seconds``: the rate is handled/second over that window, and the
slowest single second is reported too. At the end the table must hold exactly as
many versions as the writers stored (no duplicates), every one sealed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import random
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl

GOAL_RATE = 100.0
GOAL_SECONDS = 60.0
TENANT = "22222222-2222-4222-8222-222222222222"
DB_NAME = "rb_bench_history"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n", 2)[2])
    p.add_argument("--seconds", type=float, default=60.0, help="measured window (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before the window")
    p.add_argument("--devices", type=int, default=500, help="distinct devices (default 500)")
    p.add_argument("--writers", type=int, default=2, help="writer actors (default 2)")
    p.add_argument("--partitions", type=int, default=2, help="snapshot topic partitions")
    p.add_argument("--changed-percent", type=float, default=10.0, help="new versions (default 10)")
    p.add_argument("--config-bytes", type=int, default=30_000, help="config size (default 30000)")
    p.add_argument("--backlog", type=int, default=2000, help="snapshots kept ahead of the writers")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--output", help="results file (default benchmarks/results/history_writers.json)")
    bl.provenance.add_argument(p)
    return p.parse_args(argv)


class Fleet:
    """Each device's current configuration; ``next()`` gives one device's next snapshot."""

    def __init__(self, devices: int, config_bytes: int, changed_percent: float) -> None:
        from tests.support.history import capture_text

        base = capture_text()
        filler = "".join(f"add address=198.51.100.{n % 250} list=pad{n}\n"
                         for n in range(config_bytes // 40))
        base = base + "/ip firewall address-list\n" + filler
        base = base[:config_bytes]
        base = base[:base.rfind("\n") + 1]
        self.ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-{n}")) for n in range(devices)]
        self.texts = {d: base + f"/system identity\nset name=bench-{n}\n"
                      for n, d in enumerate(self.ids)}
        self.seq = dict.fromkeys(self.ids, 0)
        self.changed = changed_percent / 100
        self.rng = random.Random(0)
        self.produced = 0
        # Recent, so that no version is past CONFIG_RETENTION_DAYS (nothing is retired).
        self.start = int(time.time()) - 86_400

    def next(self) -> tuple[str, bytes]:
        from ray_backup.snapshot import Snapshot

        device = self.ids[self.produced % len(self.ids)]
        self.produced += 1
        self.seq[device] += 1
        if self.seq[device] > 1 and self.rng.random() < self.changed:
            self.texts[device] += f"add address=203.0.113.{self.seq[device] % 250} list=new\n"
        text = self.texts[device]
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.start + self.seq[device]))
        snapshot = Snapshot(device, TENANT, at, hashlib.sha256(text.encode()).hexdigest(), text, 2)
        return device, snapshot.to_json_bytes()


class Feeder(threading.Thread):
    """Produces snapshots, staying ``backlog`` ahead of what the writers handled."""

    def __init__(self, bootstrap: str, topic: str, fleet: Fleet, backlog: int) -> None:
        super().__init__(name="feeder", daemon=True)
        from confluent_kafka import Producer

        self.producer = Producer({"bootstrap.servers": bootstrap, "compression.type": "zstd",
                                  "linger.ms": 20, "queue.buffering.max.kbytes": 512 * 1024})
        self.topic, self.fleet, self.backlog = topic, fleet, backlog
        self.handled = 0  # set by the sampler
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.fleet.produced - self.handled >= self.backlog:
                self.producer.poll(0.05)
                continue
            for _ in range(50):
                key, value = self.fleet.next()
                try:
                    self.producer.produce(self.topic, key=key.encode(), value=value)
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)
        self.producer.flush(10)
        self.producer = None  # librdkafka's client goes with its last reference


def handled(stats: list[dict]) -> int:
    return sum(s[k] for s in stats for k in ("new", "duplicate", "stale", "rejected", "poison"))


def totals(stats: list[dict]) -> dict:
    keys = ("new", "duplicate", "stale", "rejected", "poison", "changes", "store_failures")
    return {k: sum(s[k] for s in stats) for k in keys}


def measure(feeder: Feeder, args: argparse.Namespace) -> dict:
    from ray_backup.history import writers

    started = time.monotonic()
    while handled(writers.stats()) == 0:  # the group's first join takes a few seconds
        if time.monotonic() - started > 120:
            raise RuntimeError("the writers handled nothing within 120 s")
        time.sleep(0.2)
    joined_s = time.monotonic() - started
    deadline = time.monotonic() + args.warmup
    while time.monotonic() < deadline:
        feeder.handled = handled(writers.stats())
        time.sleep(0.2)
    samples, lags = [], []
    window_start = time.monotonic()
    next_tick = window_start
    while True:
        stats = writers.stats()
        feeder.handled = count = handled(stats)
        now = time.monotonic()
        if now >= next_tick:
            samples.append((now - window_start, count))
            lags.append(sum(s["lag"] or 0 for s in stats))
            next_tick += 1.0
            if now - window_start >= args.seconds:
                break
        time.sleep(0.05)
    window = samples[-1][0] - samples[0][0]
    done = samples[-1][1] - samples[0][1]
    per_second = [b[1] - a[1] for a, b in zip(samples, samples[1:], strict=False)]
    return {"joined_s": round(joined_s, 2), "window_s": round(window, 2), "handled": done,
            "rate": round(done / window, 1) if window else None,
            "slowest_second": min(per_second) if per_second else None,
            "per_second": per_second, "lag_max": max(lags) if lags else None}


def check(url: str, stored: int) -> dict:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*), count(*) FILTER (WHERE config_text LIKE "
                            "'aes256gcm:v1:%%') FROM router_config_snapshots").fetchone()
        doubled = conn.execute(
            "SELECT count(*) FROM (SELECT device_id, sha256_hash, collected_at FROM "
            "router_config_snapshots GROUP BY 1, 2, 3 HAVING count(*) > 1) d").fetchone()[0]
    return {"versions_in_table": rows[0], "sealed": rows[1], "versions_stored": stored,
            "duplicate_versions": doubled, "consistent": rows[0] == stored == rows[1] and not doubled}


def run(args: argparse.Namespace) -> dict:
    import psycopg

    from ray_backup import job
    from ray_backup.history import writers
    from ray_backup.inventory.schema import init_db
    from ray_backup.settings import Settings
    from tests.support import services as svc

    key = base64.b64encode(os.urandom(32)).decode()
    with svc.PostgresServer() as pg, svc.KafkaBroker() as kafka:
        with psycopg.connect(pg.url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DB_NAME}")
        url = pg.url_for(DB_NAME)
        init_db(url)
        topic = kafka.create_topic("config.snapshots", args.partitions)
        kafka.create_topic("config.changes", 1)
        # Before Ray starts: its workers inherit this environment (secrets included).
        os.environ.update({"DATABASE_URL": url, "CREDENTIAL_ENCRYPTION_KEY": key,
                           "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap, "KAFKA_TOPIC": topic,
                           "RAY_BACKUP_HISTORY_WRITERS": str(args.writers)})
        settings = Settings.load()
        fleet = Fleet(args.devices, args.config_bytes, args.changed_percent)
        feeder = Feeder(kafka.bootstrap, topic, fleet, args.backlog)
        with bl.local_ray(num_cpus=args.ray_cpus):
            feeder.start()
            writers.start(settings, job.actor_env())
            try:
                result = measure(feeder, args)
            finally:
                feeder.stop.set()
                feeder.join(30)
                writers.stop(10)
                final = writers.stats()  # stopped: every count final
                job.stop_all(grace_s=2)
        result.update(totals(final), config_bytes=len(next(iter(fleet.texts.values()))))
        result["check"] = check(url, result["new"])
    return result


def table(doc: dict) -> str:
    p = doc["parameters"]
    row = [p["writers"], p["partitions"], p["devices"], doc["config_bytes"], p["changed_percent"],
           doc["window_s"], doc["handled"], doc["rate"], doc["slowest_second"], doc["new"],
           doc["duplicate"], doc["lag_max"], doc["check"]["consistent"]]
    return bl.markdown_table(["writers", "partitions", "devices", "config bytes", "% changed",
                              "window s", "handled", "snapshots/s", "slowest second",
                              "new versions", "duplicates", "max lag", "table consistent"], [row])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bl.provenance.require_clean(args.allow_dirty)
    doc = run(args)
    doc["parameters"] = {"seconds": args.seconds, "warmup": args.warmup, "devices": args.devices,
                         "writers": args.writers, "partitions": args.partitions,
                         "changed_percent": args.changed_percent, "backlog": args.backlog,
                         "goal_rate": GOAL_RATE, "goal_seconds": GOAL_SECONDS}
    doc["summary"] = {"rate": doc["rate"], "window_s": doc["window_s"],
                      "goal_met": bool(doc["rate"] and doc["rate"] >= GOAL_RATE
                                       and doc["window_s"] >= GOAL_SECONDS
                                       and doc["check"]["consistent"])}
    bl.publish("history_writers", doc, args.output, table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
