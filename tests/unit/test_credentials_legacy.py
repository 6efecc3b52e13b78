"""Legacy AES-256-GCM credentials: round trip and every way a blob can be wrong."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_backup.credentials.legacy import (
    LegacyCipher,
    decrypt_credentials,
    encrypt_credentials,
    load_key,
)
from ray_backup.errors import CredentialsError

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(32)).decode()
PASSWORD = "s3cr3t-Pässword"


def seal(plaintext: bytes, key: str = KEY) -> bytes:
    """A blob as the-other-dude's backend writes it: nonce + AESGCM.encrypt(...)."""
    nonce = os.urandom(12)
    return nonce + AESGCM(base64.b64decode(key)).encrypt(nonce, plaintext, None)


def assert_secret_free(exc: pytest.ExceptionInfo) -> None:
    text = str(exc.value) + repr(exc.value)
    assert PASSWORD not in text and KEY not in text
    # No chained exception may carry the plaintext into a traceback.
    assert exc.value.__cause__ is None
    assert exc.value.__context__ is None or exc.value.__suppress_context__


def test_round_trip():
    blob = encrypt_credentials(KEY, "admin", PASSWORD)
    assert len(blob) == 12 + len(json.dumps({"username": "admin", "password": PASSWORD})) + 16
    creds = decrypt_credentials(KEY, blob)
    assert (creds.username, creds.password, creds.key_file) == ("admin", PASSWORD, None)
    assert PASSWORD not in repr(creds)


def test_typed_document_and_backend_layout():
    typed = seal(json.dumps({"type": "routeros", "username": "a", "password": "b"}).encode())
    assert decrypt_credentials(KEY, typed).username == "a"
    assert decrypt_credentials(KEY, encrypt_credentials(KEY, "a", "b", typed=True)).password == "b"


def test_empty_password_is_allowed():
    assert decrypt_credentials(KEY, seal(b'{"username": "admin", "password": ""}')).password == ""


def test_accepts_memoryview_from_bytea():
    blob = encrypt_credentials(KEY, "admin", PASSWORD)
    assert decrypt_credentials(KEY, memoryview(blob)).password == PASSWORD


def flip(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1:]


GOOD = encrypt_credentials(KEY, "admin", PASSWORD)


@pytest.mark.parametrize(
    "blob, message",
    [
        (b"", "too short"),
        (GOOD[:27], "too short"),
        (GOOD[:-1], "wrong key or corrupted"),
        (flip(GOOD, 0), "wrong key or corrupted"),  # nonce
        (flip(GOOD, 20), "wrong key or corrupted"),  # ciphertext
        (flip(GOOD, len(GOOD) - 1), "wrong key or corrupted"),  # tag
        (GOOD + b"\0", "wrong key or corrupted"),
    ],
    ids=["empty", "truncated-short", "truncated", "nonce-bit", "ciphertext-bit", "tag-bit",
         "extra-byte"],
)
def test_corrupt_blobs(blob, message):
    with pytest.raises(CredentialsError, match=message) as exc:
        decrypt_credentials(KEY, blob)
    assert_secret_free(exc)


def test_wrong_key():
    with pytest.raises(CredentialsError, match="wrong key") as exc:
        decrypt_credentials(OTHER_KEY, GOOD)
    assert_secret_free(exc)
    assert OTHER_KEY not in str(exc.value)


@pytest.mark.parametrize(
    "plaintext, message",
    [
        (PASSWORD.encode(), "did not decrypt to JSON"),
        (b"\xff\xfe" + PASSWORD.encode(), "did not decrypt to JSON"),
        (json.dumps(["admin", PASSWORD]).encode(), "not a JSON object"),
        (json.dumps(PASSWORD).encode(), "not a JSON object"),
        (b"null", "not a JSON object"),
        (json.dumps({"username": 1, "password": PASSWORD}).encode(), "username"),
        (json.dumps({"username": "", "password": PASSWORD}).encode(), "username"),
        (json.dumps({"password": PASSWORD}).encode(), "username"),
        (json.dumps({"username": "admin"}).encode(), "password"),
        (json.dumps({"username": "admin", "password": None}).encode(), "password"),
        (json.dumps({"username": "admin", "password": 1234}).encode(), "password"),
        (json.dumps({"type": "snmp_v2c", "username": "a", "password": PASSWORD}).encode(),
         "type 'snmp_v2c'"),
        (json.dumps({"type": 7, "username": "a", "password": PASSWORD}).encode(), "type int"),
    ],
)
def test_bad_documents(plaintext, message):
    with pytest.raises(CredentialsError, match=message) as exc:
        decrypt_credentials(KEY, seal(plaintext))
    assert_secret_free(exc)


@pytest.mark.parametrize(
    "key, message",
    [("not base64!", "not standard base64"),
     (base64.b64encode(bytes(16)).decode(), "32 bytes, got 16"),
     (base64.urlsafe_b64encode(b"\xfb" * 32).decode(), "not standard base64")],
)
def test_bad_key(key, message):
    with pytest.raises(CredentialsError, match=message) as exc:
        load_key(key)
    assert key not in str(exc.value)


def test_cipher_repr_hides_key():
    assert KEY not in repr(LegacyCipher(KEY))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_fail_cleanly(blob):
    with pytest.raises(CredentialsError):
        decrypt_credentials(KEY, blob)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_plaintext_gives_credentials_or_credentials_error(plaintext):
    try:
        creds = decrypt_credentials(KEY, seal(plaintext))
    except CredentialsError:
        return
    assert isinstance(creds.username, str) and isinstance(creds.password, str)
