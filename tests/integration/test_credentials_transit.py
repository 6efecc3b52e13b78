"""Transit decryption over real HTTP, against the local fake Transit server.

No OpenBao/Vault server can be installed here; tests/support/fake_transit.py
answers the decrypt endpoint as Transit does.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from ray_backup.credentials.resolver import CredentialResolver
from ray_backup.credentials.transit import TransitClient
from ray_backup.errors import ConfigError, CredentialsError
from ray_backup.models import CredentialRef, Device, secret_digest
from ray_backup.settings import Settings
from tests.support.fake_transit import FakeTransit

TOKEN = "s.super-secret-token"
TENANT_A = "11111111-2222-3333-4444-555555555555"
TENANT_B = "99999999-8888-7777-6666-555555555555"
PASSWORD = "router-pass-Ω"


@pytest.fixture
def fake():
    with FakeTransit(token=TOKEN) as server:
        yield server


def secret(username: str = "admin", password: str = PASSWORD, **extra) -> str:
    return json.dumps({"username": username, "password": password, **extra})


def client(fake: FakeTransit, token: str = TOKEN, **kwargs) -> TransitClient:
    return TransitClient(fake.addr, token, **kwargs)


def assert_no_secrets(exc: pytest.ExceptionInfo) -> None:
    text = str(exc.value) + repr(exc.value)
    assert TOKEN not in text and PASSWORD not in text


def test_decrypt(fake):
    ciphertext = fake.encrypt(f"tenant_{TENANT_A}", secret(type="routeros"))
    creds = client(fake).decrypt_credentials(TENANT_A, ciphertext)
    assert (creds.username, creds.password) == ("admin", PASSWORD)
    assert fake.requests == [(f"/v1/transit/decrypt/tenant_{TENANT_A}", TOKEN)]


def test_bad_token(fake):
    ciphertext = fake.encrypt(f"tenant_{TENANT_A}", secret())
    with pytest.raises(CredentialsError, match=r"HTTP 403 \(permission denied\)") as exc:
        client(fake, token="wrong").decrypt(TENANT_A, ciphertext)
    assert_no_secrets(exc)
    assert "wrong" not in str(exc.value)


def test_bad_ciphertext(fake):
    fake.create_key(f"tenant_{TENANT_A}")
    good = fake.encrypt(f"tenant_{TENANT_A}", secret())
    tampered = good[:-6] + ("AAAA==" if not good.endswith("AAAA==") else "BBBB==")
    with pytest.raises(CredentialsError, match="HTTP 400") as exc:
        client(fake).decrypt(TENANT_A, tampered)
    assert_no_secrets(exc)
    with pytest.raises(CredentialsError, match="does not start with 'vault:v'"):
        client(fake).decrypt(TENANT_A, "plain text")


def test_each_tenant_has_its_own_key(fake):
    for_a = fake.encrypt(f"tenant_{TENANT_A}", secret("a-user"))
    for_b = fake.encrypt(f"tenant_{TENANT_B}", secret("b-user"))
    c = client(fake)
    assert c.decrypt_credentials(TENANT_A, for_a).username == "a-user"
    assert c.decrypt_credentials(TENANT_B, for_b).username == "b-user"
    with pytest.raises(CredentialsError, match=rf"key 'tenant_{TENANT_B}'.*HTTP 400"):
        c.decrypt(TENANT_B, for_a)


def test_unknown_tenant_key(fake):
    ciphertext = fake.encrypt(f"tenant_{TENANT_A}", secret())
    with pytest.raises(CredentialsError, match="encryption key not found"):
        client(fake).decrypt("no-such-tenant", ciphertext)


def test_custom_mount_and_key_template():
    with FakeTransit(token=TOKEN, mount="secrets/transit") as fake:
        ciphertext = fake.encrypt("shared-key", secret())
        c = TransitClient(fake.addr + "/", TOKEN, mount="secrets/transit",
                          key_template="shared-key")
        assert c.decrypt_credentials(TENANT_A, ciphertext).username == "admin"


def test_bad_key_template_and_address():
    with pytest.raises(CredentialsError, match="not a valid template"):
        TransitClient("http://127.0.0.1:1", TOKEN, key_template="tenant_{tenant}")
    with pytest.raises(ConfigError, match="OPENBAO_ADDR"):
        TransitClient("127.0.0.1:8200", TOKEN)


def test_plaintext_that_is_not_credentials(fake):
    for plaintext, message in [("not json", "did not decrypt to JSON"),
                               ("[1]", "not a JSON object"),
                               ('{"username": 1, "password": "x"}', "username")]:
        ciphertext = fake.encrypt(f"tenant_{TENANT_A}", plaintext)
        with pytest.raises(CredentialsError, match=message):
            client(fake).decrypt_credentials(TENANT_A, ciphertext)


def test_server_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    c = TransitClient(f"http://127.0.0.1:{port}", TOKEN)
    with pytest.raises(CredentialsError, match="unreachable") as exc:
        c.decrypt(TENANT_A, "vault:v1:AAAA")
    assert_no_secrets(exc)


def test_slow_server_times_out():
    with socket.socket() as listener:  # accepts, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        c = TransitClient(f"http://127.0.0.1:{listener.getsockname()[1]}", TOKEN, timeout=0.5)
        started = time.monotonic()
        with pytest.raises(CredentialsError, match="timed out after 0.5 s"):
            c.decrypt(TENANT_A, "vault:v1:AAAA")
        assert time.monotonic() - started < 3


def test_not_json_reply():
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"<html")

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    try:
        c = TransitClient(f"http://127.0.0.1:{server.server_address[1]}", TOKEN)
        with pytest.raises(CredentialsError, match="reply is not JSON"):
            c.decrypt(TENANT_A, "vault:v1:AAAA")
    finally:
        server.server_close()


def test_resolver_uses_settings_and_caches(fake):
    settings = Settings(openbao_addr=fake.addr, openbao_token=TOKEN, credential_cache_ttl=60.0)
    resolver = CredentialResolver(settings)
    assert TOKEN not in repr(resolver) and TOKEN not in repr(settings)
    ciphertext = fake.encrypt(f"tenant_{TENANT_A}", secret())
    device = Device(id="d1", host="192.0.2.1", tenant_id=TENANT_A,
                    credentials=CredentialRef(transit=ciphertext, digest=secret_digest(ciphertext)))
    for _ in range(3):
        assert resolver.resolve(device).password == PASSWORD
    assert len(fake.requests) == 1
