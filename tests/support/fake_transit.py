"""A local stand-in for the OpenBao/Vault Transit decrypt endpoint.

No Vault or OpenBao server can be installed here, so Transit is tested against
this: a real HTTP server on 127.0.0.1 that answers ``POST /v1/<mount>/decrypt/<key>``
and ``POST /v1/<mount>/encrypt/<key>`` (which, like a key created on first use,
makes the key when it is new) the way the real one does (token check, per-key secrets, Vault's error shapes).
``encrypt()`` makes ``vault:v1:`` ciphertexts that only the named key decrypts.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


class FakeTransit:
    """Start with ``FakeTransit(token)``; ``.addr`` is the base URL; ``.close()`` stops it."""

    def __init__(self, token: str = "test-token", mount: str = "transit") -> None:
        self.token = token
        self.mount = mount
        self.keys: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (path, token seen) for assertions
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.addr = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeTransit:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def create_key(self, name: str) -> None:
        self.keys.setdefault(name, AESGCM.generate_key(bit_length=256))

    def encrypt(self, key_name: str, plaintext: bytes | str) -> str:
        """A ``vault:v1:`` ciphertext of ``plaintext`` under ``key_name`` (created if new)."""
        if isinstance(plaintext, str):
            plaintext = plaintext.encode()
        self.create_key(key_name)
        nonce = os.urandom(12)
        sealed = nonce + AESGCM(self.keys[key_name]).encrypt(nonce, plaintext, None)
        return "vault:v1:" + base64.b64encode(sealed).decode()

    def encrypt_request(self, key_name: str, plaintext_b64: str) -> tuple[int, dict]:
        """(HTTP status, JSON body) as Transit answers an encrypt request."""
        try:
            plaintext = base64.b64decode(plaintext_b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            return 400, {"errors": ["failed to base64-decode plaintext"]}
        return 200, {"data": {"ciphertext": self.encrypt(key_name, plaintext), "key_version": 1}}

    def decrypt(self, key_name: str, ciphertext: str) -> tuple[int, dict]:
        """(HTTP status, JSON body) as Transit answers a decrypt request."""
        if key_name not in self.keys:
            return 400, {"errors": ["encryption key not found"]}
        if not isinstance(ciphertext, str) or not ciphertext.startswith("vault:v1:"):
            return 400, {"errors": ["invalid ciphertext: no prefix"]}
        try:
            sealed = base64.b64decode(ciphertext[len("vault:v1:"):], validate=True)
            plaintext = AESGCM(self.keys[key_name]).decrypt(sealed[:12], sealed[12:], None)
        except (binascii.Error, ValueError, InvalidTag):
            return 400, {"errors": ["cipher: message authentication failed"]}
        return 200, {"data": {"plaintext": base64.b64encode(plaintext).decode()}}


def _handler(fake: FakeTransit) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            token = self.headers.get("X-Vault-Token", "")
            fake.requests.append((self.path, token))
            prefix = f"/v1/{fake.mount}/"
            if token != fake.token:
                return self._reply(403, {"errors": ["permission denied"]})
            action, _, key = self.path[len(prefix):].partition("/")
            if not self.path.startswith(prefix) or action not in ("decrypt", "encrypt"):
                return self._reply(404, {"errors": []})
            field = "ciphertext" if action == "decrypt" else "plaintext"
            try:
                length = int(self.headers.get("Content-Length", "0"))
                value = json.loads(self.rfile.read(length))[field]
            except (ValueError, KeyError, TypeError):
                return self._reply(400, {"errors": [f"missing {field} to {action}"]})
            if action == "decrypt":
                return self._reply(*fake.decrypt(key, value))
            self._reply(*fake.encrypt_request(key, value))

        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    return Handler
