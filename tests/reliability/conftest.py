"""Soak variants (marker ``soak``) run only with RAY_BACKUP_SOAK=1."""

from __future__ import annotations

import os

import pytest

SOAK = os.environ.get("RAY_BACKUP_SOAK", "").strip().lower() in {"1", "true", "yes"}


def pytest_collection_modifyitems(config, items):
    if SOAK:
        return
    skip = pytest.mark.skip(reason="soak test: set RAY_BACKUP_SOAK=1 to run it")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
