"""Ray actors: supervisor, per-device backup actors and the SSH semaphore."""
