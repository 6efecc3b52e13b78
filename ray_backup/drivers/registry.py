"""Drivers by name."""

from __future__ import annotations

from ray_backup.drivers import routeros
from ray_backup.drivers.base import Driver
from ray_backup.errors import ConfigError

DRIVERS: dict[str, Driver] = {routeros.DRIVER.name: routeros.DRIVER}


def get_driver(name: str) -> Driver:
    try:
        return DRIVERS[name]
    except KeyError:
        raise ConfigError(f"unknown driver {name!r} (known: {', '.join(sorted(DRIVERS))})") from None
