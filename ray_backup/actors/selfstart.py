"""Actors that start their own work once Ray has created (or re-created) them."""

from __future__ import annotations

import logging
import threading

import ray

log = logging.getLogger(__name__)


def call_self_soon(method: str, delay_s: float = 1.0) -> None:
    """Call ``method`` on the current actor after ``delay_s``.

    An actor restarted by Ray runs ``__init__`` again with no caller around;
    this lets it resume its loops by itself. The method must be idempotent.
    """

    def kick() -> None:
        try:
            getattr(ray.get_runtime_context().current_actor, method).remote()
        except Exception as exc:  # not running inside an actor (plain unit tests)
            log.debug("no self-start of %s: %s", method, exc)

    timer = threading.Timer(delay_s, kick)
    timer.daemon = True
    timer.start()
