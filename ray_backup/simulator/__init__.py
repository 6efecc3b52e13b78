"""A RouterOS SSH simulator for tests, the demo and benchmarks."""
