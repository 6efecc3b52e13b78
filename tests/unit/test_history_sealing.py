"""At-rest format of configuration texts, and which store the settings open."""

import base64

import pytest

from ray_backup.errors import CredentialsError
from ray_backup.history import open_history
from ray_backup.history.directory import DirectoryHistory
from ray_backup.history.postgres import PostgresHistory
from ray_backup.history.sealing import AES_PREFIX, Sealer
from ray_backup.settings import Settings

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(32)).decode()
DEVICE = "11111111-1111-4111-8111-111111111111"
TEXT = "/ppp secret\nadd name=a password=Ω-secret\n"


def test_aes_round_trip_and_layout():
    sealed = Sealer(key_b64=KEY).seal(DEVICE, None, TEXT)
    assert sealed.startswith(AES_PREFIX) and "secret" not in sealed
    raw = base64.b64decode(sealed[len(AES_PREFIX):])
    assert len(raw) == 12 + len(TEXT.encode()) + 16  # nonce ‖ ciphertext ‖ tag
    assert Sealer(key_b64=KEY).open(DEVICE, None, sealed) == TEXT


def test_aes_text_is_bound_to_its_device_and_key():
    sealed = Sealer(key_b64=KEY).seal(DEVICE, None, TEXT)
    with pytest.raises(CredentialsError, match="does not decrypt"):
        Sealer(key_b64=KEY).open("another-device", None, sealed)
    with pytest.raises(CredentialsError, match="does not decrypt"):
        Sealer(key_b64=OTHER_KEY).open(DEVICE, None, sealed)
    with pytest.raises(CredentialsError, match="CREDENTIAL_ENCRYPTION_KEY is not set"):
        Sealer().open(DEVICE, None, sealed)


def test_plaintext_without_a_key_and_old_plaintext_still_reads_with_one():
    assert Sealer().seal(DEVICE, None, TEXT) == TEXT
    assert Sealer(key_b64=KEY).open(DEVICE, None, TEXT) == TEXT
    assert Sealer().mode == "plaintext" and Sealer(key_b64=KEY).mode == "aes-256-gcm"


def test_transit_text_without_openbao_is_a_clear_error():
    with pytest.raises(CredentialsError, match="OpenBao is not configured"):
        Sealer(key_b64=KEY).open(DEVICE, "t", "vault:v1:abc")


def test_open_history_follows_output_then_database_then_default(tmp_path):
    with_db = Settings(database_url="postgresql://u@127.0.0.1:1/db", output_dir=str(tmp_path / "d"))
    chosen = open_history(with_db, output_dir=tmp_path / "o")
    assert isinstance(chosen, DirectoryHistory) and chosen.output == tmp_path / "o"
    assert isinstance(open_history(with_db), PostgresHistory)  # connects on first use
    default = open_history(Settings(output_dir=str(tmp_path / "d")))
    assert isinstance(default, DirectoryHistory) and default.output == tmp_path / "d"
    assert open_history(Settings(credential_encryption_key=KEY), tmp_path).sealer.mode == "aes-256-gcm"
