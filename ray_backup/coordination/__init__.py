"""Coordination: online gating, per-device locks and persisted state (Redis or in-job)."""
