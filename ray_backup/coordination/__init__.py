"""Coordination: online gating, per-device locks and persisted state (Redis or in-job)."""

from ray_backup.coordination.base import Coordinator, Lock, open_coordinator

__all__ = ["Coordinator", "Lock", "open_coordinator"]
