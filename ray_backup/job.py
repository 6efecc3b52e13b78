"""The long-running job: connect to Ray, create or re-adopt the actors, block until stopped.

`ray-backup run` and `python -m ray_backup.job` both land here; so does
`ray job submit --working-dir . -- ray-backup run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping

import ray

from ray_backup import constants as C
from ray_backup.history import writers as history_writers
from ray_backup.settings import CONFIG_ENV, Settings

log = logging.getLogger("ray_backup.job")

# Settings passed on the command line become these variables for every actor.
OPTION_ENV = {"inventory": "RAY_BACKUP_INVENTORY", "output": "RAY_BACKUP_OUTPUT_DIR", "config": CONFIG_ENV}


def actor_env(overrides: dict[str, str | None] | None = None) -> dict[str, str]:
    """The settings this driver was given, as environment variables for the actors.

    Ray starts actor processes with the environment of the node's raylet, not
    of this driver; the runtime_env carries the settings over. Paths are made
    absolute so that they mean the same in the actors' working directory.
    """
    # Secrets stay out: the dashboard and `ray list actors --detail` show a runtime_env.
    # They reach the actors through each node's environment (or the job's own runtime_env).
    names = {
        f.metadata["env"] for f in dataclasses.fields(Settings) if not f.metadata.get("secret")
    } | {CONFIG_ENV}
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    for option, value in (overrides or {}).items():
        if value:
            env[OPTION_ENV[option]] = value
    for name in ("RAY_BACKUP_INVENTORY", "RAY_BACKUP_OUTPUT_DIR", CONFIG_ENV, "RAY_BACKUP_SPOOL_DIR"):
        if name in env and "://" not in env[name]:
            env[name] = os.path.abspath(env[name])
    return env


# Set by Ray's job supervisor for a `ray job submit` entrypoint: the job's runtime_env.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def working_dir_copy(environ: Mapping[str, str] = os.environ, cwd: str | None = None) -> str | None:
    """The unpacked ``--working-dir`` copy this driver runs in (it is the entrypoint's
    working directory under `ray job submit`), or None outside such a job."""
    try:
        runtime_env = json.loads(environ.get(JOB_CONFIG_ENV) or "{}").get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    if not runtime_env.get("working_dir"):
        return None
    return os.path.realpath(cwd or os.getcwd())


def working_dir_problem(settings: Settings, copy: str | None) -> str | None:
    """One line when a path this job writes resolves inside the job's working-dir copy,
    which Ray deletes with the job (and the host keys or snapshots written there)."""
    if copy is None:
        return None
    paths = [("--inventory", settings.inventory_file)]  # its host-key sidecar lies beside it
    if not settings.kafka_bootstrap_servers:
        paths.append(("--output", settings.output_dir))
    inside = [
        f"{option} {path!r}" for option, path in paths
        if path and "://" not in path
        and os.path.commonpath([os.path.realpath(path), copy]) == copy
    ]
    if not inside:
        return None
    return (
        f"{' and '.join(inside)} {'is' if len(inside) == 1 else 'are'} inside the Ray job's "
        f"working-dir copy {copy}, which Ray "
        "deletes when the job ends (with the host keys and snapshots written there): "
        "give an absolute path outside it"
    )


def connect(address: str | None = None, **local_options) -> None:
    """Join the cluster at RAY_ADDRESS (or ``address``); start a local Ray when there is none.

    A cluster with Ray's token authentication is joined with the token Ray finds
    (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); a refused token is one
    ConfigError line, not a traceback.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        token_auth_by_default()
        try:
            ray.init(address=address, namespace=C.NAMESPACE, log_to_driver=True)
        except Exception as exc:
            if not _refused_for_auth(exc):
                raise
            from ray_backup.errors import ConfigError

            raise ConfigError(
                f"Ray cluster at {address} refused this client's authentication "
                f"(RAY_AUTH_MODE={os.environ.get('RAY_AUTH_MODE', 'unset')}): set RAY_AUTH_MODE=token "
                "and the cluster's token in ~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN "
                "(`ray get-auth-token` on the head node prints it)"
            ) from None
    else:
        # None joins a Ray already running on this machine; "local" always starts one.
        local_options.setdefault("include_dashboard", True)
        ray.init(address=address, namespace=C.NAMESPACE, **local_options)


def token_auth_by_default() -> None:
    """Use token mode for an explicit cluster address when no mode is set and a token exists.

    Ray >= 2.59 starts `ray start --head` clusters with token authentication when a token
    exists, but only enables it on the client side for a cluster it finds itself
    (address "auto"); with RAY_ADDRESS set every client would need RAY_AUTH_MODE=token.
    Ray's own helper looks for the token as Ray does and leaves an explicit mode alone.
    """
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available,
    )

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _refused_for_auth(exc: BaseException) -> bool:
    """Whether ray.init failed because the cluster refused (or required) a token."""
    from ray.exceptions import AuthenticationError

    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, AuthenticationError) or "InvalidAuthToken" in text or "Unauthenticated" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# Outside service mode the driver beats this often, and the supervisor stops the
# fleet when it misses the lease (the driver was killed before it could).
HEARTBEAT_S = 5.0
DRIVER_LEASE_S = 30.0


def backend_notes(settings: Settings) -> list[str]:
    """What a job without Redis or Kafka does instead, said once at start."""
    notes = []
    if not settings.redis_url:
        notes.append(
            "REDIS_URL is not set: every device counts as online, locks are held within the job "
            "and device state lives in memory (lost when an actor restarts)"
        )
    if not settings.kafka_bootstrap_servers:
        notes.append(
            f"KAFKA_BOOTSTRAP_SERVERS is not set: snapshots go to the directory {settings.output_dir}"
        )
    return notes


def start(settings: Settings, env: dict[str, str], service: bool = True):
    """Create or re-adopt the semaphore and the supervisor; return the supervisor's handle."""
    from ray_backup.actors import options

    for note in backend_notes(settings):
        log.warning("%s", note)

    semaphore = options.semaphore(settings.max_concurrent, settings.logins_per_second, env)
    # A semaphore that already existed keeps its leases; apply today's limits to it.
    ray.get(semaphore.set_limits.remote(settings.max_concurrent, settings.logins_per_second))
    # Near the driver (the head node, under `ray job submit`): a stable metrics address.
    supervisor = options.supervisor(env, node_id=ray.get_runtime_context().get_node_id())
    summary = ray.get(supervisor.start.remote(None if service else DRIVER_LEASE_S))
    history_writers.start(settings, env)
    log.info(
        "job running: %d devices in %d actors; metrics at http://%s/metrics",
        summary["devices"], summary["actors"], summary["metrics"],
    )
    for name in unseen_secrets(settings, summary["settings_seen"]):
        log.warning(
            "%s is set here but not where the actors run: set it in the nodes' environment, "
            "a --config file on every node, or the job's runtime_env", name,
        )
    return supervisor


def unseen_secrets(settings: Settings, seen_by_actors: list[str]) -> list[str]:
    """Secret settings this driver has that the actors lack (secrets are not forwarded)."""
    secret = {f.metadata["env"] for f in dataclasses.fields(Settings) if f.metadata.get("secret")}
    mine = {k for k, v in settings.summary().items() if v and k in secret}
    return sorted(mine - set(seen_by_actors))


def running_supervisor():
    """The supervisor of a job already running on this cluster, or None."""
    try:
        return ray.get_actor(C.SUPERVISOR_NAME, namespace=C.NAMESPACE)
    except ValueError:
        return None


def stop_all(grace_s: float = 10.0) -> int:
    """Stop the job's actors cleanly (device actors first); return how many device actors went."""
    removed = 0
    supervisor = running_supervisor()
    if supervisor is not None:
        try:
            removed = ray.get(supervisor.shutdown.remote(grace_s), timeout=grace_s + 60)
        except Exception as exc:
            log.warning("supervisor did not shut down cleanly: %s", exc)
        ray.kill(supervisor, no_restart=True)
    history_writers.stop(grace_s)  # leave the consumer group cleanly before the kill below
    for info in ray.util.list_named_actors(all_namespaces=True):
        if info.get("namespace") != C.NAMESPACE:
            continue
        try:
            ray.kill(ray.get_actor(info["name"], namespace=C.NAMESPACE), no_restart=True)
        except ValueError:
            pass
    return removed


def run(
    settings: Settings,
    env: dict[str, str],
    service: bool = False,
    status_every: float = 60.0,
    stop_grace: float = 2.0,
) -> int:
    """Block until SIGTERM/SIGINT (what `ray job stop` sends); then stop cleanly unless
    ``service``. Return 1 when the supervisor is gone for good (nothing is backed up)."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    supervisor = start(settings, env, service=service)
    watch = SupervisorWatch(supervisor, None if service else DRIVER_LEASE_S)
    last_summary = time.monotonic()
    while not stop.wait(HEARTBEAT_S):
        gone = watch.beat()
        if gone:
            log.error("the supervisor is gone (%s): no device is backed up any more; stopping "
                      "the job (start it again with `ray-backup run`)", gone)
            stop_all(grace_s=stop_grace)
            return 1
        if time.monotonic() - last_summary >= status_every:
            last_summary = time.monotonic()
            try:
                # Short: a slow answer must not hold back the next heartbeat.
                _log_summary(ray.get(watch.handle.status.remote(), timeout=HEARTBEAT_S * 2))
            except Exception as exc:
                log.warning("supervisor not reachable: %s", exc)
    if service:
        log.info("driver exiting; actors keep running (service mode). Stop them with `ray-backup stop`.")
        return 0
    log.info("stopping: device actors finish or abandon their backups")
    started = time.monotonic()
    removed = stop_all(grace_s=stop_grace)
    log.info("stopped %d device actors in %.1f s", removed, time.monotonic() - started)
    return 0


class SupervisorWatch:
    """The driver's heartbeats, and whether the supervisor is gone for good.

    One heartbeat is in flight at a time; its outcome is read at the next beat, so a
    slow supervisor never blocks the driver. A supervisor Ray is restarting is waited
    for; one that died and whose name is gone (killed, or stopped itself) is gone.
    """

    def __init__(self, handle, lease_s: float | None) -> None:
        self.handle = handle
        self._lease_s = lease_s
        self._pending = None

    def beat(self) -> str | None:
        """Send a heartbeat; return why the supervisor is gone for good, else None."""
        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if not ready:
                return None  # still busy with the last one
            pending, self._pending = self._pending, None
            try:
                ray.get(pending)
            except ray.exceptions.ActorUnavailableError:
                pass  # restarting, or not reachable for now
            except ray.exceptions.RayActorError as exc:
                current = running_supervisor()
                if current is None:
                    return str(exc).splitlines()[0][:200] or type(exc).__name__
                self.handle = current  # another one under the name
        self._pending = self.handle.heartbeat.remote(self._lease_s)
        return None


def _log_summary(rows: list[dict]) -> None:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    log.info("fleet: %s", ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "empty")


def main(argv: list[str] | None = None) -> int:
    from ray_backup.cli import main as cli_main

    return cli_main(["run", *(argv if argv is not None else [])])


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
