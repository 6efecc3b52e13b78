"""Logging set-up shared by the CLI, the driver and every actor process."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_ray_backup", False) for h in root.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._ray_backup = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    logging.getLogger("ray_backup").setLevel(level)
    root.setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)
    logging.getLogger("ray_backup").setLevel(level)
