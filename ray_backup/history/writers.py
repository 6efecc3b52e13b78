"""The history writer actors of a job: how many, where, started and stopped (issue 10's table).

| ``DATABASE_URL`` | Kafka | who writes history |
|---|---|---|
| set | yes | ``RAY_BACKUP_HISTORY_WRITERS`` writer actors, one consumer group, spread |
| set | no | the backing-up process (``sinks.history.HistorySink``) |
| unset | yes | one writer actor on the head node, into the output directory |
| unset | no | the directory sink's process (``HistorySink`` again) |

Writers are named ``history-writer-<n>`` in the ``ray_backup`` namespace, so
``job.stop_all`` finds them; ``stop`` lets them leave the group cleanly first.
"""

from __future__ import annotations

import logging

import ray

from ray_backup import constants as C
from ray_backup.settings import Settings

log = logging.getLogger(__name__)

STATS_TIMEOUT_S = 2.0


def writer_count(settings: Settings) -> int:
    """How many writer actors the settings call for (0: the backing-up process writes)."""
    if not settings.kafka_bootstrap_servers:
        return 0
    # The output directory is one node's disk: one writer there, no concurrent appends.
    return settings.history_writers if settings.database_url else 1


def start(settings: Settings, env: dict[str, str]) -> list:
    """Create (or re-adopt) the writers the settings call for; return their handles."""
    from ray_backup.actors import options

    count = writer_count(settings)
    # The driver runs on the head node under `ray job submit`: the output directory is there.
    node = None if settings.database_url else ray.get_runtime_context().get_node_id()
    names = [f"{C.HISTORY_WRITER_PREFIX}{n}" for n in range(count)]
    # Writers of an earlier start that the settings no longer call for (fewer writers, or
    # Kafka gone) would go on consuming: they leave the group, the others take their share.
    surplus = [(name, handle) for name, handle in running() if name not in names]
    if surplus:
        _retire(surplus)
        log.info("history: stopped %d writer(s) the settings no longer call for (%s)",
                 len(surplus), ", ".join(name for name, _ in surplus))
    writers = [options.history_writer(name, env, node) for name in names]
    for writer in writers:  # a re-adopted writer whose loop was stopped runs again
        writer.start.remote()
    if writers:
        where = "PostgreSQL" if settings.database_url else settings.output_dir
        log.info("history: %d writer(s) consuming %s as group %s into %s", count,
                 settings.kafka_topic, settings.history_group, where)
    return writers


def running() -> list[tuple[str, object]]:
    """(name, handle) of every writer alive in the namespace."""
    found = []
    for info in ray.util.list_named_actors(all_namespaces=True):
        name = info.get("name", "")
        if info.get("namespace") == C.NAMESPACE and name.startswith(C.HISTORY_WRITER_PREFIX):
            try:
                found.append((name, ray.get_actor(name, namespace=C.NAMESPACE)))
            except ValueError:  # gone meanwhile
                pass
    return found


def stop(grace_s: float = 10.0) -> int:
    """Ask every writer to finish its message and leave the group; return how many did."""
    return _stop_loops(running(), grace_s)


def _retire(writers: list[tuple[str, object]], grace_s: float = 10.0) -> None:
    """Stop these writers' loops (they leave the group cleanly), then end their actors."""
    _stop_loops(writers, grace_s)
    for _, handle in writers:
        ray.kill(handle, no_restart=True)


def _stop_loops(writers: list[tuple[str, object]], grace_s: float) -> int:
    refs = [handle.stop.remote(grace_s) for _, handle in writers]
    stopped = 0
    for (name, _), ref in zip(writers, refs, strict=True):
        try:
            stopped += bool(ray.get(ref, timeout=grace_s + 5))
        except Exception as exc:
            log.warning("history writer %s did not stop cleanly: %s", name, exc)
    return stopped


def stats() -> list[dict]:
    """Every running writer's ``stats()``; a writer that does not answer in time is left out."""
    refs = [handle.stats.remote() for _, handle in running()]
    if not refs:
        return []
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=STATS_TIMEOUT_S)
    found = []
    for ref in ready:
        try:
            found.append(ray.get(ref))
        except Exception as exc:  # died meanwhile: its successor answers next time
            log.debug("history writer stats: %s", exc)
    return found
