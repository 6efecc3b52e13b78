"""The legacy SSH algorithm set, host key types, and the setting that allows the legacy set."""

from __future__ import annotations

import paramiko
import pytest

from ray_backup import errors
from ray_backup.errors import ConfigError
from ray_backup.runtime import ssh_options
from ray_backup.settings import Settings
from ray_backup.transport import algorithms
from ray_backup.transport.algorithms import disabled_algorithms, is_legacy, key_type, key_types_offered

LEGACY_NAMES = {
    "kex": {"diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1",
            "diffie-hellman-group-exchange-sha1"},
    "keys": {"ssh-rsa", "ssh-rsa-cert-v01@openssh.com"},
    "pubkeys": {"ssh-rsa", "ssh-rsa-cert-v01@openssh.com"},
    "macs": {"hmac-sha1", "hmac-sha1-96", "hmac-md5", "hmac-md5-96"},
    "ciphers": {"aes128-cbc", "aes192-cbc", "aes256-cbc", "3des-cbc"},
}


def test_paramiko_is_the_pinned_4x():
    # 5.x dropped the SHA-1 key exchanges RouterOS 6 needs; pyproject pins >=4.0,<5.
    assert paramiko.__version__.startswith("4.")


def test_every_legacy_name_paramiko_knows_is_disabled_unless_allowed():
    assert {k: set(v) for k, v in disabled_algorithms(False).items()} == LEGACY_NAMES
    assert disabled_algorithms(True) == {}


def test_a_transport_not_allowed_legacy_offers_none_of_it():
    transport = paramiko.Transport(_NoSocket(), disabled_algorithms=disabled_algorithms(False))
    try:
        lists = {"kex": transport.preferred_kex, "keys": transport.preferred_keys,
                 "pubkeys": transport.preferred_pubkeys, "macs": transport.preferred_macs,
                 "ciphers": transport.preferred_ciphers}
        for category, names in lists.items():
            assert names and not [n for n in names if is_legacy(category, n)], category
        assert "rsa-sha2-512" in transport.preferred_keys  # RSA host keys still work, with SHA-2
    finally:
        transport.close()


class _NoSocket:
    """Enough of a socket for paramiko.Transport's constructor."""

    def settimeout(self, _):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("algorithm, expected", [
    ("ssh-rsa", "ssh-rsa"), ("rsa-sha2-256", "ssh-rsa"), ("rsa-sha2-512", "ssh-rsa"),
    ("rsa-sha2-512-cert-v01@openssh.com", "ssh-rsa"), ("ssh-ed25519", "ssh-ed25519"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
])
def test_key_type(algorithm, expected):
    assert key_type(algorithm) == expected


def test_other_key_types_are_those_offered_and_allowed_in_the_servers_order():
    allowed = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
    offered = ["ssh-ed25519", "rsa-sha2-512", "rsa-sha2-256", "ssh-rsa", "ecdsa-sha2-nistp256", "ssh-dss"]
    assert key_types_offered(offered, allowed, but="ssh-ed25519") == ["ssh-rsa", "ecdsa-sha2-nistp256"]
    # Only ssh-rsa signatures offered and not allowed: the RSA key cannot be asked for.
    assert key_types_offered(["ssh-ed25519", "ssh-rsa"], allowed, but="ssh-ed25519") == []


def test_incompatibility_names_the_offer_and_the_setting():
    offered = {"kex": ["diffie-hellman-group14-sha1"], "keys": ["ssh-rsa"],
               "ciphers": ["aes128-ctr", "aes128-cbc"], "macs": ["hmac-sha1"]}
    text = algorithms.incompatibility(offered, allow_legacy=False)
    assert text == (
        "no SSH algorithm in common: the device offers key exchange diffie-hellman-group14-sha1; "
        "host key ssh-rsa; MACs hmac-sha1 (legacy, not allowed: set "
        "RAY_BACKUP_SSH_LEGACY_ALGORITHMS=1 or the device's ssh_legacy_algorithms: true)"
    )
    assert len(text) < 300  # results cut error messages at 300 characters
    unknown = {**offered, "ciphers": ["arcfour"]}
    assert algorithms.incompatibility(unknown, allow_legacy=True).endswith("(not supported by this client)")


def test_ssh_incompatible_is_a_transient_kind():
    assert errors.SSH_INCOMPATIBLE in errors.ERROR_KINDS
    assert errors.SSH_INCOMPATIBLE not in errors.BLOCKING_KINDS
    assert errors.kind_of(errors.SSHIncompatible("x")) == errors.SSH_INCOMPATIBLE


@pytest.mark.parametrize("text, expected", [("1", True), ("true", True), ("0", False), ("off", False)])
def test_legacy_setting_from_the_environment(text, expected):
    settings = Settings.load(environ={"RAY_BACKUP_SSH_LEGACY_ALGORITHMS": text})
    assert settings.ssh_legacy_algorithms is expected
    assert ssh_options(settings).legacy_algorithms is expected


def test_legacy_setting_from_the_config_file_and_its_errors(tmp_path):
    config = tmp_path / "settings.yaml"
    config.write_text("ssh_legacy_algorithms: true\n")
    assert Settings.load(environ={}, config_file=config).ssh_legacy_algorithms is True
    assert Settings.load(environ={}).ssh_legacy_algorithms is False
    with pytest.raises(ConfigError, match="RAY_BACKUP_SSH_LEGACY_ALGORITHMS: must be 1 or 0"):
        Settings.load(environ={"RAY_BACKUP_SSH_LEGACY_ALGORITHMS": "maybe"})
