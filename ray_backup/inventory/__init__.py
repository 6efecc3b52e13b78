"""Inventory sources: where the device list comes from (PostgreSQL or a YAML file)."""
