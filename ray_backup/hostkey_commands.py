"""`ray-backup hostkey accept|reset`: the operator's answer to a host-key mismatch.

Both write the inventory directly (PostgreSQL columns or the YAML sidecar), need no
running job, and tell a running supervisor so that a blocked device retries now.
"""

from __future__ import annotations

import functools
import sys

from ray_backup.errors import ConfigError
from ray_backup.inventory.base import open_inventory
from ray_backup.inventory.fields import parse_fingerprint, parse_uuid
from ray_backup.settings import Settings

EXIT_OK, EXIT_FAILED = 0, 1


def run_hostkey(args, settings: Settings) -> int:
    """`ray-backup hostkey accept|reset DEVICE_ID`: write the inventory, tell a running job."""
    try:
        device_id = parse_uuid(args.device_id, "DEVICE_ID")
        fingerprint = parse_fingerprint(getattr(args, "fingerprint", None))
    except ValueError as exc:
        raise ConfigError(str(exc).replace("ssh_host_key_fingerprint", "--fingerprint")) from None
    supervisor = functools.cache(_supervisor_if_running)  # Ray is asked only when needed
    inventory = open_inventory(settings)
    try:
        if args.hostkey_command == "accept":
            fingerprint = fingerprint or _presented_fingerprint(settings, device_id, supervisor)
            inventory.accept_host_key(device_id, fingerprint)
            print(f"device {device_id}: host key {fingerprint} stored in {inventory!r}")
        elif inventory.reset_host_key(device_id):
            print(f"device {device_id}: stored host key removed; its next backup trusts and "
                  "stores the key it sees")
        else:
            print(f"device {device_id}: no host key was stored; trust on first use")
    except ConfigError:
        raise
    except Exception as exc:  # the database is down, the sidecar is not writable, ...
        print(f"error: inventory not written: {type(exc).__name__}: {exc}"[:300], file=sys.stderr)
        return EXIT_FAILED
    finally:
        inventory.close()
    return _tell_supervisor(supervisor(), device_id)


def _supervisor_if_running():
    """The running job's supervisor, or None; never starts a Ray of its own."""
    import logging
    import os

    import ray

    from ray_backup import constants as C
    from ray_backup import job

    address = os.environ.get("RAY_ADDRESS") or "auto"
    if address == "local":
        return None
    if address != "auto":
        job.token_auth_by_default()  # a token-auth cluster, as job.connect joins it
    try:
        ray.init(address=address, namespace=C.NAMESPACE, log_to_driver=False,
                 logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.AuthenticationError):
        return None
    return job.running_supervisor()


def _presented_fingerprint(settings, device_id: str, supervisor) -> str:
    """The key the device showed at its last mismatch: its saved state, else the job's status."""
    import re

    import ray

    from ray_backup.coordination.base import open_coordinator

    coordinator = open_coordinator(settings)
    try:
        state = coordinator.load_state(device_id)
    finally:
        coordinator.close()
    if state is not None and state.presented_fingerprint:
        return state.presented_fingerprint
    if supervisor() is not None:
        rows = ray.get(supervisor().status.remote(), timeout=60)
        error = next((r.get("last_error") or "" for r in rows if r["device_id"] == device_id), "")
        found = re.search(r"presented (SHA256:[A-Za-z0-9+/]{43})", error)
        if found:
            return found.group(1)
    raise ConfigError(
        f"device {device_id}: no host key mismatch on record; pass --fingerprint SHA256:… "
        "(the key the device should have, as `ssh-keygen -lf` prints it)"
    )


def _tell_supervisor(supervisor, device_id: str) -> int:
    """Have a running job re-read the inventory now, so a blocked device retries at once."""
    if supervisor is None:
        print("no running job on this cluster: a job started later reads the change")
        return EXIT_OK
    import ray

    try:
        ray.get(supervisor.reconcile.remote(), timeout=120)
    except Exception as exc:  # the inventory is written; the next reconcile reads it anyway
        print(f"warning: the running job was not told ({type(exc).__name__}); it reads the "
              "change at its next inventory refresh (DEVICE_REFRESH_SECONDS)", file=sys.stderr)
        return EXIT_OK
    print(f"the running job re-read the inventory: device {device_id} retries now if it was blocked")
    return EXIT_OK
