"""Credential decryption: legacy AES-256-GCM and OpenBao/Vault Transit, with a TTL cache."""
