"""SSH transport: logs in, runs one command, returns its output. Knows no vendor."""
