"""Vendor drivers: which command to run, how to validate and normalize its output."""
